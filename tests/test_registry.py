import json
import time

import numpy as np
import pytest
import torch

from boldgpt.cli import main as cli_main
from boldgpt.errors import CheckpointError, ConfigError
from boldgpt.models.beit import BEiT
from boldgpt.models.igpt import IGPT
from boldgpt.models.registry import (
    create_model,
    list_models,
    load_model,
    model_defaults,
    save_model,
)

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
    assert model.config["name"] == "boldgpt_tiny_patch10"
    assert model.config["kwargs"]["depth"] == 2 and model.config["kwargs"]["categorical"]
    beit = create_model("boldbeit_micro_patch16", mask=nsd_mask)
    assert isinstance(beit, BEiT) and beit.num_patches == 114


def test_image_models_take_images():
    model = create_model("imagegpt_micro_patch16", image_size=32, **SMALL)
    assert model.patchify.channels == 3 and model.num_patches == 4
    images = torch.randn(2, 3, 32, 32)
    out = model({"image": images})
    assert out.output.shape == (2, 4, 3 * 16 * 16)
    assert model.sample(1).shape == (1, 3, 32, 32)
    assert model.config["kwargs"]["image_size"] == 32


def test_unknown_names_and_arguments_raise_config_errors():
    with pytest.raises(ConfigError, match="boldgpt_tiny_patch10"):
        create_model("boldgpt_tiny_patch11", mask=small_mask())
    with pytest.raises(ConfigError, match="depht"):
        create_model("boldgpt_tiny_patch10", mask=small_mask(), depht=3)


def test_default_mask_is_the_embedded_datasets():
    simulate = pytest.importorskip("boldgpt.sim")
    if not hasattr(simulate, "default_mask"):
        pytest.skip("boldgpt.sim.default_mask not available yet")
    model = create_model("boldgpt_micro_patch10", **SMALL)
    assert torch.equal(model.patchify.mask, torch.from_numpy(simulate.default_mask()))


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
    assert json.loads((path / "config.json").read_text())["name"] == name
    loaded = load_model(path)
    assert not loaded.training and loaded.config == model.config
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
    config["kwargs"]["embed_dim"] = 64
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        CheckpointError,
        match=r"attn\.q\.weight: checkpoint \(32, 32\), model expects \(64, 64\)",
    ):
        load_model(path)
    config["kwargs"]["embed_dim"] = 32
    config["kwargs"]["depth"] = 3
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
