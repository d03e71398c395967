"""Training configs: YAML + dotted overrides, type checks and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from boldgpt.cli import main
from boldgpt.engine.config import (
    TrainConfig,
    apply_overrides,
    config_from_dict,
    load_config,
    parse_override,
    save_config,
)
from boldgpt.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    from boldgpt.models.registry import list_models

    assert cfg.model.name in list_models()  # a registered model, not a typo
    raw = yaml.safe_load(path.read_text())
    assert cfg.optim.lr == float(raw["optim"]["lr"])  # values come from the file
    assert cfg.train.max_steps == raw["train"]["max_steps"]


def test_every_model_family_has_demo_and_full_configs():
    names = {p.stem for p in CONFIGS.glob("*.yaml")}
    for family in ("boldgpt_cont", "boldgpt_tokens", "boldbeit"):
        assert {f"{family}_demo", f"{family}_full"} <= names
    tokens = load_config(CONFIGS / "boldgpt_tokens_demo.yaml")
    assert tokens.model.kwargs["categorical"] is True


def test_demo_command_trains_the_shipped_demo_config():
    from boldgpt.evaluate.demo import demo_config

    shipped = load_config(CONFIGS / "boldgpt_cont_demo.yaml").to_dict()
    demo = demo_config(Path("x")).to_dict()
    shipped.pop("out_dir"), demo.pop("out_dir")
    demo["train"]["device"] = shipped["train"]["device"]
    assert demo == shipped


def test_overrides_are_parsed_as_yaml_and_coerced(tmp_path):
    path = write(tmp_path, "optim: {lr: 1.0e-3}\ntrain: {max_steps: 10, precision: fp32}\n")
    cfg = load_config(
        path,
        [
            "optim.lr=3e-4",  # PyYAML reads this as a string; the config makes it a float
            "train.max_steps=1e4",
            "train.precision=bf16",
            "optim.betas=[0.8, 0.99]",
            "model.kwargs.categorical=true",
            "model.freeze=[backbone.blocks.0.*]",
            "data.subjects=[0, 2]",
            "train.stop_after=null",
        ],
    )
    assert cfg.optim.lr == 3e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.train.max_steps == 10_000 and isinstance(cfg.train.max_steps, int)
    assert cfg.train.precision == "bf16"
    assert cfg.optim.betas == (0.8, 0.99)
    assert cfg.model.kwargs == {"categorical": True}
    assert cfg.model.freeze == ["backbone.blocks.0.*"]
    assert cfg.data.subjects == [0, 2]
    assert cfg.train.stop_after is None


def test_subjects_are_ids_or_nsd_names():
    cfg = config_from_dict({"data": {"subjects": ["subj03", 0, "subj01"]}})
    assert cfg.data.subjects == [0, 2]  # subj01 = id 0, sorted, duplicates merged
    assert load_config(None, ["data.subjects=[subj02]"]).data.subjects == [1]
    with pytest.raises(ConfigError, match=r"bad subject 'subj00'"):
        config_from_dict({"data": {"subjects": ["subj00"]}})


def test_default_source_is_the_data_layers_constant():
    from boldgpt.data.sources import DEFAULT_SOURCE

    assert config_from_dict({}).data.source == DEFAULT_SOURCE


def test_parse_override():
    assert parse_override("a.b.c=1") == (["a", "b", "c"], 1)
    assert parse_override("x=hello world") == (["x"], "hello world")
    for bad in ("optim.lr", "=3", "optim..lr=1", "1abc=2"):
        with pytest.raises(ConfigError, match="expected key=value"):
            parse_override(bad)
    with pytest.raises(ConfigError, match="optim.lr is a value, not a section"):
        apply_overrides({"optim": {"lr": 1}}, ["optim.lr.x=2"])


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("optim.lrr=1e-3", r"unknown key 'optim.lrr'.*did you mean 'lr'\?"),
        ("optimm.lr=1e-3", r"unknown key 'optimm'.*did you mean 'optim'\?"),
        ("train.max_steps=abc", r"train.max_steps='abc' \(str\): expected an integer"),
        ("train.max_steps=2.5", r"train.max_steps=2.5 \(float\): expected an integer"),
        ("train.compile=1", r"train.compile=1 \(int\): expected true/false"),
        ("train.precision=bf17", r"expected one of 'fp32', 'bf16', 'fp16'; did you mean 'bf16'"),
        ("optim.betas=[0.9]", r"optim.betas=\[0.9\] \(list\): expected a list of 2 numbers"),
        ("data.subjects=[a]", r"data.subjects=\['a'\]: bad subject 'a': expected a 0-based id or"),
        ("data.batch_size=0", r"data.batch_size must be > 0; got 0"),
        ("optim.warmup_steps=50", r"optim.warmup_steps=50 is longer than train.max_steps=10"),
        ("optim.min_lr=1", r"optim.min_lr must be in \[0, optim.lr=0.001\]; got 1.0"),
        ("train.device=gpu", r"train.device='gpu': expected 'auto', 'cpu', 'cuda'"),
        ("data.source=/no/such/dir", r"data.source: source '/no/such/dir' does not exist"),
        ("data.source=sim:demoo", r"unknown simulator preset 'demoo'.*did you mean 'sim:demo'"),
        ("checkpoint.resume=/no/ckpt.pt", r"checkpoint.resume='/no/ckpt.pt': expected 'auto'"),
        ("model.init_from=./missing_model", r"model.init_from='./missing_model': no such"),
        ("data=3", r"data must be a mapping of keys; got int 3"),
    ],
)
def test_bad_values_name_key_value_and_expectation(tmp_path, override, pattern):
    path = write(tmp_path, "optim: {lr: 1.0e-3, warmup_steps: 2}\ntrain: {max_steps: 10}\n")
    with pytest.raises(ConfigError, match=pattern):
        load_config(path, [override])


def test_bad_yaml_files(tmp_path):
    with pytest.raises(
        ConfigError, match=r"unknown key 'data.batchsize' in data.*did you mean 'batch_size'"
    ):
        load_config(write(tmp_path, "data: {batchsize: 4}\n"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "data: {batch_size: [\n"))
    with pytest.raises(ConfigError, match="expected a mapping of keys at the top level"):
        load_config(write(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_hub_ids_and_sim_seeds_are_valid_sources():
    for source in ("clane9/NSD-Flat", "sim:ci", "sim:demo:7"):
        assert config_from_dict({"data": {"source": source}}).data.source == source
    with pytest.raises(ConfigError, match="integer seed"):
        config_from_dict({"data": {"source": "sim:demo:x"}})


def test_save_and_load_round_trip(tmp_path):
    cfg = config_from_dict(
        {
            "optim": {"lr": 5e-4, "betas": [0.85, 0.9]},
            "model": {"kwargs": {"categorical": True}, "freeze": ["a.*"]},
            "train": {"precision": "bf16", "stop_after": 3},
        }
    )
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg
    assert isinstance(again, TrainConfig)


def test_debug_mode_shrinks_the_run():
    cfg = config_from_dict({"debug": True, "train": {"max_steps": 5000}}).apply_debug()
    assert cfg.train.max_steps == 8 and cfg.log.every == 1
    assert cfg.checkpoint.every == 4 and cfg.train.eval_every == 4


def test_cli_reports_config_errors_without_traceback(tmp_path, capsys):
    path = write(tmp_path, "train: {max_steps: 10}\noptim: {warmup_steps: 2}\n")
    assert main(["train", str(path), "optim.lrr=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'optim.lrr'" in err and "Traceback" not in err
    assert main(["train", "--print-config", str(path), "optim.lr=0.01"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["optim"]["lr"] == 0.01 and printed["train"]["max_steps"] == 10
