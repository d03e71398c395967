"""Frozen image encoders (boldgpt.models.encoders): shapes, frozen weights, the same
features as the image model they wrap, loading by directory, caching, bad input."""

from __future__ import annotations

import pytest
import torch

from boldgpt.errors import ConfigError, DataError
from boldgpt.models.encoders import (
    BackboneEncoder,
    TargetCache,
    build_image_encoder,
)
from boldgpt.models.registry import create_model, save_model

SIZE = 32  # 2 x 2 patches of 16 px
SMALL = dict(image_size=SIZE, depth=2, embed_dim=32, num_heads=2)


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory) -> str:
    """A small image model's directory (a full-size micro model takes seconds to build)."""
    torch.manual_seed(0)
    model = create_model("imagebeit_micro_patch16", **SMALL)
    return str(save_model(model, tmp_path_factory.mktemp("enc") / "imagebeit"))


def images(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["imagebeit_micro_patch16", "imagegpt_micro_patch16"])
def test_backbone_encoder_gives_the_models_own_features(name):
    model = create_model(name, **SMALL).eval()
    encoder = BackboneEncoder(model, name=name)
    x = images()
    out = encoder(x)
    assert out.tokens.shape == (3, 4, 32) and out.pooled.shape == (3, 32)
    torch.testing.assert_close(out.pooled, out.tokens.mean(dim=1))
    # the model's head over the encoder's tokens = the model's own predictions
    patches = model.patchify(x)
    with torch.no_grad():
        if name.startswith("imagebeit"):
            expected = model.predict_masked(patches, torch.zeros(3, 4, dtype=torch.bool))
        else:  # fixed order: outputs at the patch positions (the first one is the prefix's)
            arange = torch.arange(4)
            expected = model.decode(patches, arange, torch.arange(5).expand(3, -1))[:, 1:]
    torch.testing.assert_close(model.head(out.tokens), expected)


def test_encoder_is_frozen_and_stays_in_eval_mode():
    encoder = build_image_encoder("imagebeit_micro_patch16", image_size=SIZE)
    assert not any(p.requires_grad for p in encoder.parameters())
    probe = torch.nn.Linear(encoder.embed_dim, 1)
    encoder.train()
    assert not encoder.training and not encoder.model.training
    probe(encoder(images()).pooled).sum().backward()
    assert probe.weight.grad is not None
    assert all(p.grad is None for p in encoder.parameters())
    assert encoder.mean == (0.485, 0.456, 0.406) and encoder.image_size == SIZE


def test_encoder_from_a_model_directory(tmp_path):
    model = create_model("imagebeit_micro_patch16", **SMALL)
    save_model(model, tmp_path / "enc")
    encoder = build_image_encoder(str(tmp_path / "enc"), image_size=SIZE)
    direct = BackboneEncoder(model.eval())
    x = images()
    torch.testing.assert_close(encoder(x).tokens, direct(x).tokens)
    with pytest.raises(ConfigError, match=f"takes {SIZE} px images; the model's image_size is 64"):
        build_image_encoder(str(tmp_path / "enc"), image_size=64)


def test_encoder_by_hub_id(tmp_path, monkeypatch):
    from boldgpt.models import registry

    model = create_model("imagebeit_micro_patch16", **SMALL)
    save_model(model, tmp_path / "snapshot")
    asked = []
    monkeypatch.setattr(
        registry, "_download", lambda hub_id, rev: asked.append(hub_id) or tmp_path / "snapshot"
    )
    encoder = build_image_encoder("someone/imagebeit-demo", image_size=SIZE)
    assert asked == ["someone/imagebeit-demo"] and encoder.name == "someone/imagebeit-demo"
    x = images()
    torch.testing.assert_close(encoder(x).tokens, BackboneEncoder(model.eval())(x).tokens)


def test_bad_images_and_names_are_clear_errors(tmp_path, small_dir):
    encoder = build_image_encoder(small_dir, image_size=SIZE)
    with pytest.raises(DataError, match=r"shape \(B, 3, 32, 32\).*got \(2, 3, 64, 64\)"):
        encoder(torch.zeros(2, 3, 64, 64))
    with pytest.raises(DataError, match=r"shape \(B, 3, 32, 32\).*got \(2, 1, 32, 32\)"):
        encoder(torch.zeros(2, 1, SIZE, SIZE))
    with pytest.raises(DataError, match="float images"):
        encoder(torch.zeros(2, 3, SIZE, SIZE, dtype=torch.uint8))
    missing = str(tmp_path / "no_such_encoder")
    with pytest.raises(ConfigError, match="no such model directory.*imagebeit_micro_patch16"):
        build_image_encoder(missing)
    with pytest.raises(ConfigError, match="not an image model"):
        build_image_encoder("boldgpt_micro_patch10")


def test_target_cache_runs_the_encoder_once_per_stimulus(small_dir):
    encoder = build_image_encoder(small_dir, image_size=SIZE)
    calls: list[int] = []
    encoder.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    cache = TargetCache()
    x = images(4)
    x[2] = x[0]  # the same picture shown twice
    out = cache(encoder, x, torch.tensor([10, 11, 10, 12]))
    assert calls == [3] and len(cache) == 3
    direct = encoder(x)
    torch.testing.assert_close(out.pooled, direct.pooled)
    torch.testing.assert_close(out.tokens, direct.tokens)
    again = cache(encoder, x[[3, 1]], torch.tensor([12, 11]))
    assert calls == [3, 4]  # (the direct call above) and no new encoder run
    torch.testing.assert_close(again.pooled, direct.pooled[[3, 1]])


def test_timm_adapter_with_a_local_weights_file(tmp_path):
    timm = pytest.importorskip("timm")
    reference = timm.create_model("resnet18", pretrained=False, num_classes=0)
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    encoder = build_image_encoder(f"timm:resnet18:{tmp_path / 'resnet18.pth'}")
    for mine, theirs in zip(encoder.model.state_dict().values(), reference.state_dict().values()):
        torch.testing.assert_close(mine, theirs)
    out = encoder(torch.zeros(2, 3, encoder.image_size, encoder.image_size))
    assert out.pooled.shape == (2, encoder.embed_dim)
    assert out.tokens.shape == (2, encoder.num_tokens, encoder.embed_dim)
