import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from boldgpt.cli import main as cli_main
from boldgpt.data.masks import resolve_mask
from boldgpt.errors import CheckpointError, ConfigError
from boldgpt.generate import sample
from boldgpt.models.beit import BEiT
from boldgpt.models.config import BEiTConfig, IGPTConfig, PatchModelConfig
from boldgpt.models.igpt import IGPT
from boldgpt.models.registry import (
    create_model,
    describe,
    list_models,
    load_model,
    model_config,
    model_defaults,
    push_to_hub,
    save_model,
)

FIXTURES = Path(__file__).parent / "fixtures"

SMALL = dict(embed_dim=32, depth=2, num_heads=4)


def small_mask(h: int = 40, w: int = 50) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return ((yy - h / 2) / (h / 2.3)) ** 2 + ((xx - w / 2) / (w / 2.2)) ** 2 < 1


def batch_for(model, B: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    mask = model.patchify.mask
    return {
        "activity": torch.randn(B, *mask.shape, generator=g) * mask,
        "subject_id": torch.arange(B),
    }


def test_registry_names_and_size_presets():
    names = list_models()
    for family in ("boldgpt", "boldbeit"):
        for size in ("micro", "tiny", "small", "base"):
            assert f"{family}_{size}_patch10" in names
            assert f"{family}_{size}_patch16" in names
    assert "imagegpt_small_patch16" in names and "igpt" in names
    dims = {s: model_defaults(f"boldgpt_{s}_patch10") for s in ("micro", "tiny", "small", "base")}
    got = {s: (d["embed_dim"], d["depth"], d["num_heads"]) for s, d in dims.items()}
    assert got == {
        "micro": (128, 4, 4),
        "tiny": (192, 12, 3),
        "small": (384, 12, 6),
        "base": (768, 12, 12),
    }
    assert list_models("boldbeit_tiny") == ["boldbeit_tiny_patch10", "boldbeit_tiny_patch16"]


def test_create_model_builds_the_named_architecture(nsd_mask):
    model = create_model("boldgpt_tiny_patch10", mask=nsd_mask, categorical=True, depth=2)
    assert isinstance(model, IGPT) and model.shuffle and model.categorical
    assert model.num_patches == 253 and model.patchify.patch_size == 10
    assert len(model.backbone.blocks) == 2 and model.backbone.embed_dim == 192
    assert model.backbone.blocks[0].attn.num_heads == 3
    assert model.head.out_features == 1024 and model.num_subjects == 8
    assert model.registry_name == "boldgpt_tiny_patch10"
    assert model.config == dataclasses.replace(
        model_config("boldgpt_tiny_patch10"), depth=2, categorical=True
    )
    assert model.config.depth == 2 and model.config.categorical
    beit = create_model("boldbeit_micro_patch16", mask=nsd_mask)
    assert isinstance(beit, BEiT) and beit.num_patches == 114


def test_image_models_take_images():
    model = create_model("imagegpt_micro_patch16", image_size=32, **SMALL)
    assert model.patchify.channels == 3 and model.num_patches == 4
    images = torch.randn(2, 3, 32, 32)
    out = model({"image": images})
    assert out.output.shape == (2, 4, 3 * 16 * 16)
    assert sample(model, 1).shape == (1, 3, 32, 32)
    assert model.config.image_size == 32
    assert torch.equal(model.patchify.mask, torch.ones(32, 32, dtype=torch.bool))


def test_unknown_names_and_arguments_raise_config_errors():
    with pytest.raises(ConfigError, match="boldgpt_tiny_patch10"):
        create_model("boldgpt_tiny_patch11", mask=small_mask())
    with pytest.raises(ConfigError, match="depht.*did you mean 'depth'"):
        create_model("boldgpt_tiny_patch10", mask=small_mask(), depht=3)
    with pytest.raises(ConfigError, match="mask_ratio"):
        model_config("boldgpt_tiny_patch10", mask_ratio=0.5)  # a BEiT field
    with pytest.raises(ConfigError, match="input_key"):
        model_config("boldgpt_tiny_patch10", input_key="pixels")
    with pytest.raises(ConfigError, match="image_size"):
        model_config("imagegpt_micro_patch16", image_size=40)  # not a multiple of 16


def test_map_models_need_an_explicit_mask_image_models_do_not():
    with pytest.raises(ConfigError, match=r"needs mask=.*'sim'.*load_mask"):
        create_model("boldgpt_micro_patch10", **SMALL)
    with pytest.raises(ConfigError, match="needs the cortex mask"):
        IGPT(IGPTConfig(**SMALL))
    named = create_model("boldgpt_micro_patch10", mask="sim", **SMALL)
    assert torch.equal(named.patchify.mask, torch.from_numpy(resolve_mask("sim")))
    assert named.num_patches == 243
    with pytest.raises(ConfigError, match="neither a named mask"):
        create_model("boldgpt_micro_patch10", mask="simm", **SMALL)
    image = create_model("imagebeit_micro_patch16", image_size=32, **SMALL)
    assert image.num_patches == 4


def test_model_config_resolves_presets_without_building():
    config = model_config("boldgpt_micro_patch10", depth=2, num_subjects=3)
    assert isinstance(config, IGPTConfig) and (config.depth, config.embed_dim) == (2, 128)
    assert config.batch_keys == ("activity", "subject_id") and config.image_size is None
    image = model_config("imagebeit_small_patch16")
    assert isinstance(image, BEiTConfig) and issubclass(BEiTConfig, PatchModelConfig)
    assert image.batch_keys == ("image",) and image.image_size == 224
    assert image.input_key == "image"
    # presets are shared instances: an override never changes them
    assert model_config("boldgpt_micro_patch10").depth == 4
    assert model_config("boldbeit_micro_patch10", mask_ratio=[0.2, 0.4]).mask_ratio == (0.2, 0.4)


def test_describe_is_json_and_tells_architectures_apart():
    a = create_model("boldgpt_micro_patch10", mask=small_mask(), **SMALL)
    info = describe(a)
    assert json.loads(json.dumps(info)) == info
    assert info["name"] == "boldgpt_micro_patch10" and info["class"] == "IGPT"
    assert info["config"]["depth"] == 2 and info["num_patches"] == a.num_patches
    assert info["mask_pixels"] == int(small_mask().sum())
    assert info["num_parameters"] == sum(p.numel() for p in a.parameters())
    same = create_model("boldgpt_micro_patch10", mask=small_mask(), **SMALL)
    assert describe(same) == info
    deeper = create_model("boldgpt_micro_patch10", mask=small_mask(), **dict(SMALL, depth=3))
    assert describe(deeper)["config"] != info["config"]
    other_mask = small_mask()
    other_mask[20, 1:49] = ~other_mask[20, 1:49]
    moved = create_model("boldgpt_micro_patch10", mask=other_mask, **SMALL)
    assert describe(moved)["mask_sha256"] != info["mask_sha256"]


@pytest.mark.parametrize(
    "name, extra",
    [
        ("boldgpt_micro_patch10", dict(ordering="random", num_registers=2)),
        ("boldgpt_micro_patch10", dict(categorical=True, vocab_size=8, shuffle=False)),
        ("boldbeit_micro_patch10", dict(mask_ratio=[0.2, 0.8], qk_norm=True, layer_scale=0.1)),
    ],
)
def test_save_load_roundtrip_gives_identical_outputs(tmp_path, name, extra):
    torch.manual_seed(0)
    model = create_model(name, mask=small_mask(), **SMALL, **extra)
    if model.tokenizer is not None:
        model.tokenizer.vocab.normal_()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))  # not the init: the weights must travel
    model.eval()
    path = save_model(model, tmp_path / "model")
    meta = json.loads((path / "config.json").read_text())
    assert meta["name"] == name and meta["format_version"] == 2
    assert {k: meta[k] for k in model.config.to_dict()} == model.config.to_dict()
    loaded = load_model(path)
    assert not loaded.training and loaded.config == model.config
    assert loaded.registry_name == name and describe(loaded) == describe(model)
    assert torch.equal(loaded.patchify.patch_indices, model.patchify.patch_indices)
    batch = batch_for(model)
    torch.manual_seed(1)
    a = model(batch)
    torch.manual_seed(1)
    b = loaded(batch)
    assert torch.equal(a.output, b.output) and torch.equal(a.loss, b.loss)


def test_save_model_replaces_a_model_dir_but_refuses_other_dirs(tmp_path):
    model = create_model("boldgpt_micro_patch10", mask=small_mask(), **SMALL)
    save_model(model, tmp_path / "m")
    save_model(model, tmp_path / "m")  # replacing a model directory is fine
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("precious")
    with pytest.raises(ValueError, match="refusing"):
        save_model(model, other)
    assert (other / "keep.txt").read_text() == "precious"


def test_load_model_with_mismatched_weights_names_the_keys(tmp_path):
    model = create_model("boldgpt_micro_patch10", mask=small_mask(), **SMALL)
    path = save_model(model, tmp_path / "m")
    config = json.loads((path / "config.json").read_text())
    config["embed_dim"] = 64
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        CheckpointError,
        match=r"attn\.q\.weight: checkpoint \(32, 32\), model expects \(64, 64\)",
    ):
        load_model(path)
    config["embed_dim"] = 32
    config["depth"] = 3
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"missing key backbone\.blocks\.2\."):
        load_model(path)
    (path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot read weights"):
        load_model(path)


def test_offline_hub_id_fails_fast_with_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match="local model directory"):
        load_model("someone/no-such-boldgpt-model")
    assert time.perf_counter() - t0 < 10
    with pytest.raises(FileNotFoundError):
        load_model("./not/a/dir")


def test_cli_list_models(capsys):
    assert cli_main(["list-models", "micro_patch10"]) == 0
    out = capsys.readouterr().out
    assert "boldgpt_micro_patch10" in out and "boldbeit_micro_patch10" in out
    assert "boldgpt_tiny_patch10" not in out
    assert cli_main(["list-models", "--json", "boldgpt_small_patch10"]) == 0
    presets = json.loads(capsys.readouterr().out)
    assert presets["boldgpt_small_patch10"]["embed_dim"] == 384


def test_format_1_model_directory_loads_with_the_same_outputs():
    """tests/fixtures/model_v1 was written by save_model before format 2 (see
    fixtures/make_model_v1.py), with the outputs that code gave for a saved batch."""
    model = load_model(FIXTURES / "model_v1")
    saved = load_file(str(FIXTURES / "model_v1_io.safetensors"))
    assert isinstance(model, IGPT) and model.registry_name == "boldgpt_micro_patch10"
    assert model.config.num_registers == 2 and model.config.embed_dim == 16
    mask = model.patchify.mask
    activity = torch.zeros(2, *mask.shape)
    activity[:, mask] = saved["activity_in_mask"].float()
    batch = {"activity": activity, "subject_id": saved["subject_id"]}
    with torch.no_grad():
        shuffled = model(batch, order=saved["order"])
        fixed = model(batch, order="fixed")
    # Float rounding, not bits: another CPU picks other matmul kernels (seen: 1.8e-7 on
    # outputs of order 1), while a wrongly loaded weight moves them by far more.
    exact = {"rtol": 1e-5, "atol": 1e-6}
    torch.testing.assert_close(shuffled.output, saved["output_shuffled"], **exact)
    torch.testing.assert_close(shuffled.loss.reshape(1), saved["loss_shuffled"], **exact)
    torch.testing.assert_close(fixed.loss.reshape(1), saved["loss_fixed"], **exact)


def test_saved_directory_has_a_model_card_and_keeps_its_facts(tmp_path):
    model = create_model("boldbeit_micro_patch10", mask=small_mask(), **SMALL)
    path = save_model(
        model,
        tmp_path / "m",
        card={"data": "sim:demo, 800 maps", "evaluation": {"val_loss": 0.61234}},
        training_steps=1234,
    )
    assert sorted(p.name for p in path.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    card = (path / "README.md").read_text()
    params = sum(p.numel() for p in model.parameters())
    assert card.startswith("---\nlibrary_name: boldgpt\n")
    assert f"parameters: {params:,}" in card
    assert f"{model.num_patches} patches" in card and "width 32, depth 2, 4 heads" in card
    assert "data: sim:demo, 800 maps" in card and "training steps: 1234" in card
    assert "| val_loss | 0.6123 |" in card
    loaded = load_model(path)
    assert loaded.card == {
        "data": "sim:demo, 800 maps",
        "evaluation": {"val_loss": 0.61234},
        "training_steps": 1234,
    }
    again = save_model(loaded, tmp_path / "again")  # the facts travel with the model
    assert "training steps: 1234" in (again / "README.md").read_text()
    bare = save_model(create_model("igpt", mask=small_mask(), **SMALL), tmp_path / "bare")
    assert "training steps: not recorded" in (bare / "README.md").read_text()


def test_unknown_format_version_and_fields_are_checkpoint_errors(tmp_path):
    model = create_model("boldgpt_micro_patch10", mask=small_mask(), **SMALL)
    path = save_model(model, tmp_path / "m")
    meta = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(dict(meta, format_version=3)))
    with pytest.raises(CheckpointError, match="format_version 3"):
        load_model(path)
    (path / "config.json").write_text(json.dumps(dict(meta, dept=2)))
    with pytest.raises(CheckpointError, match="dept.*did you mean 'depth'"):
        load_model(path)


def test_push_to_hub_offline_fails_with_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    model = create_model("boldgpt_micro_patch10", mask=small_mask(), **SMALL)
    with pytest.raises(CheckpointError, match="could not push.*someone/model.*not uploaded"):
        push_to_hub(model, "someone/model")
    with pytest.raises(CheckpointError, match="not a hub id"):
        push_to_hub(model, "not a hub id")
    with pytest.raises(CheckpointError, match="not a boldgpt model directory"):
        push_to_hub(tmp_path, "someone/model")
