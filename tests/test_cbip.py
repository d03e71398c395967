"""CBIP (boldgpt.models.cbip): training step with a frozen image encoder, patch
dropping that keeps slot positions, bad batches, and starting from a pretrained map
model (boldgpt.models.pretrained.init_from)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from boldgpt.errors import CheckpointError, ConfigError, DataError
from boldgpt.models.layers import param_groups
from boldgpt.models.pretrained import init_from
from boldgpt.models.registry import create_model, load_model, save_model
from image_bold import MASK, SMALL, paired_batch, save_image_encoder, small_model

SIZE = 32
ENCODER = ""


@pytest.fixture(scope="module", autouse=True)
def encoder_dir(tmp_path_factory):
    """A small pretrained-image-model directory, the frozen encoder of these tests."""
    global ENCODER
    ENCODER = save_image_encoder(tmp_path_factory.mktemp("enc"), SIZE)
    return ENCODER


def cbip(**overrides):
    return small_model(
        "cbip_micro_patch10", **{"image_size": SIZE, "image_encoder": ENCODER, **overrides}
    )


def batch(n: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    return paired_batch(n, SIZE, seed, torch.tensor([3, 5, 3, 9][:n]))


def test_training_step_leaves_the_image_encoder_frozen():
    model = cbip().train()
    assert model.config.batch_keys == ("activity", "subject_id", "image", "nsd_id")
    out = model(batch())
    out.loss.backward()
    assert out.output.shape == (4, model.image_encoder.embed_dim) == out.target.shape
    assert all(p.grad is None for p in model.image_encoder.parameters())
    assert model.backbone.pos_embed.grad.abs().sum() > 0
    assert model.loss_fn.log_scale.grad is not None
    assert not model.image_encoder.training and len(model.target_cache) == 3  # ids 3, 5, 9
    assert 0 <= out.metrics["top1"].item() <= 1
    # the optimizer never sees the frozen encoder
    params = {id(p) for g in param_groups(model, 0.05) for p in g["params"]}
    assert not params & {id(p) for p in model.image_encoder.parameters()}


def test_token_image_embedding_projects_the_token_grid_and_trains_its_head(tmp_path):
    """``image_embedding="tokens"``: the target is a learned projection of the frozen
    encoder's token grid, so it depends on where the tokens are (a mean would not)."""
    model = cbip(image_embedding="tokens").train()
    enc = model.image_encoder
    assert model.image_head.in_features == enc.num_tokens * enc.embed_dim
    b = paired_batch(4, SIZE, 0, torch.tensor([3, 5, 7, 9]))  # (one picture per id)
    out = model(b)
    out.loss.backward()
    tokens = enc(b["image"]).tokens
    head = model.image_head
    torch.testing.assert_close(out.target, tokens.flatten(1) @ head.weight.T + head.bias)
    assert head.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in enc.parameters())
    params = {id(p) for g in param_groups(model, 0.05) for p in g["params"]}
    assert id(head.weight) in params
    # the same tokens in another order: another embedding (a pooled one is unchanged)
    with torch.no_grad():
        swapped = tokens.flip(1).flatten(1)
        assert not torch.allclose(model.image_head(swapped), out.target)
        pooled = cbip()
        assert torch.equal(pooled.embed_images(b["image"]), enc(b["image"]).pooled)
    save_model(model.eval(), tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    with torch.no_grad():
        torch.testing.assert_close(loaded.embed_images(b["image"]), model.embed_images(b["image"]))
    with pytest.raises(ConfigError, match="image_embedding='grid'"):
        cbip(image_embedding="grid")


def test_patch_dropping_keeps_each_patch_at_its_own_slot():
    model = cbip(patch_drop=0.5)
    N = model.num_patches
    b = batch()
    patches = model.patchify(b["activity"])
    slots = model.kept_slots(4, generator=torch.Generator().manual_seed(1))
    K = N - round(0.5 * N)
    assert slots.shape == (4, K)
    assert all(len(set(row.tolist())) == K for row in slots) and not torch.equal(slots[0], slots[1])
    tokens = model.tokens(patches, b["subject_id"], slots)
    P, bb = model.backbone.num_prefix, model.backbone
    for i in range(4):
        for k in (0, K // 2, K - 1):
            s = int(slots[i, k])
            expected = bb.patch_embed(patches[i, s]) + bb.pos_embed[s]
            torch.testing.assert_close(tokens[i, P + k], expected)
    # dropped patches do not matter; kept ones do
    model.eval()
    with torch.no_grad():
        ref = model.embed_bold_patches(patches, b["subject_id"], slots)
        dropped = torch.ones(N, dtype=torch.bool)
        dropped[slots[0]] = False
        changed = patches.clone()
        changed[0, dropped] += 5.0
        torch.testing.assert_close(model.embed_bold_patches(changed, b["subject_id"], slots), ref)
        changed[0, slots[0, 0]] += 5.0
        assert not torch.allclose(
            model.embed_bold_patches(changed, b["subject_id"], slots)[0], ref[0]
        )


def test_bad_batches_and_configs_are_clear_errors():
    model = cbip()
    b = batch()
    del b["image"]
    with pytest.raises(DataError, match=r"needs batch\['image'\] \(B, 3, 32, 32\)"):
        model(b)
    b = batch()
    b["image"] = torch.zeros(4, 3, 64, 64)
    with pytest.raises(DataError, match=r"\(B, 3, 32, 32\).*got \(4, 3, 64, 64\)"):
        model(b)
    with pytest.raises(ConfigError, match="loss='triplet'"):
        cbip(loss="triplet")
    with pytest.raises(ConfigError, match="image_size=None"):
        cbip(image_size=None)
    with pytest.raises(ConfigError, match="no such model directory"):
        cbip(image_encoder="/no/such/encoder")


def test_save_and_load_round_trip(tmp_path):
    model = cbip().eval()
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert type(loaded).__name__ == "CBIP" and loaded.config == model.config
    b = batch()
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.encode_bold(b["activity"], b["subject_id"]),
            model.encode_bold(b["activity"], b["subject_id"]),
        )


def _assert_exactly_reported(model, before, source_state, report):
    after = model.state_dict()
    for key in after:
        if key in report.loaded:
            assert torch.equal(after[key], source_state[key]), key
        else:
            assert torch.equal(after[key], before[key]), key


def test_init_from_a_pretrained_beit_transfers_exactly_what_it_reports(tmp_path):
    torch.manual_seed(1)
    beit = create_model("boldbeit_micro_patch10", mask="sim", **SMALL)
    save_model(beit, tmp_path / "beit")
    model = cbip()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = init_from(model, tmp_path / "beit")
    _assert_exactly_reported(model, before, beit.state_dict(), report)
    assert "backbone.blocks.0.attn.q.weight" in report.loaded
    assert "backbone.pos_embed" in report.loaded
    assert "head.weight" in report.new and "backbone.reg_embed" in report.new
    assert report.skipped["head.weight"].startswith("name: CBIP does not take it")
    assert report.skipped["backbone.mask_token"] == "name: CBIP has no such tensor"
    assert report.skipped["residual_cov"].startswith("name: CBIP does not take it")
    assert not any(k.startswith("image_encoder.") for k in report.loaded)
    assert any("loaded  backbone.pos_embed" in line for line in report.lines())


def test_init_from_matches_slots_by_place_and_refuses_other_geometry():
    torch.manual_seed(2)
    raster = create_model("boldbeit_micro_patch10", mask="sim", ordering="raster", **SMALL)
    model = cbip()  # radial order
    report = init_from(model, raster)
    assert "backbone.pos_embed" in report.loaded
    mine, theirs = model.patchify.patch_indices, raster.patchify.patch_indices
    for i in (0, 7, model.num_patches - 1):
        j = int((theirs == mine[i]).nonzero())
        assert torch.equal(model.backbone.pos_embed[i], raster.backbone.pos_embed[j])
    with pytest.raises(CheckpointError, match="cuts 16 px patches.*needs 10 px"):
        init_from(model, create_model("boldbeit_micro_patch16", mask="sim", **SMALL))
    other = MASK.copy()
    other[100, :] = False
    with pytest.raises(CheckpointError, match="another mask"):
        init_from(model, create_model("boldbeit_micro_patch10", mask=other, **SMALL))
    with pytest.raises(CheckpointError, match="expected a model over BOLD maps"):
        init_from(model, create_model("imagebeit_micro_patch16", image_size=SIZE, **SMALL))


@pytest.mark.slow
@pytest.mark.parametrize("family", ["cbip", "image2bold", "bold2image"])
def test_shipped_config_trains_through_the_engine(tmp_path, family):
    """`boldgpt train configs/<family>_micro.yaml` (shrunk, the image encoder pointed at a
    small image model): the batch hook caches the stimuli at 64 px beside the maps, the
    model trains and is saved, and the saved model loads with its image side."""
    from boldgpt.cli import main
    from boldgpt.engine.logs import read_log
    from nsd_tiny import build_tiny_nsd

    tiny = build_tiny_nsd(tmp_path / "nsd", subjects=(0,), sessions=2, trials_per_session=12)
    torch.manual_seed(0)
    image_model = create_model("imagebeit_micro_patch16", image_size=64, **SMALL)
    encoder = save_model(image_model, tmp_path / "encoder")
    config = Path(__file__).resolve().parents[1] / "configs" / f"{family}_micro.yaml"
    overrides = [
        f"out_dir={tmp_path / 'run'}",
        f"data.source={tiny.root}",
        f"data.cache_root={tmp_path / 'cache'}",
        "data.batch_size=4",
        "train.max_steps=2",
        "train.eval_every=2",
        "train.eval_batches=1",
        "optim.warmup_steps=1",
        "checkpoint.every=2",
        "log.every=1",
        "log.progress=false",
        "log.tensorboard=false",
        *[f"model.kwargs.{k}={v}" for k, v in SMALL.items() if k != "num_subjects"],
    ]
    if family != "bold2image":  # (it has no image encoder: it reconstructs the pictures)
        overrides.append(f"model.kwargs.image_encoder={encoder}")
    assert main(["train", str(config), *overrides]) == 0
    rows = read_log(tmp_path / "run")
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in rows)
    model = load_model(tmp_path / "run" / "model")
    assert model.config.image_size == 64
    if family != "bold2image":
        assert model.image_encoder.image_size == 64
