"""bold2image (boldgpt.models.bold2image): training step through encoder and decoder,
one-pass reconstruction through generate.complete(method="query") that depends on
the sample's own map only, starting from a pretrained BEiT, bad input."""

from __future__ import annotations

import pytest
import torch

from boldgpt.errors import ConfigError, DataError
from boldgpt.generate import complete
from boldgpt.models.pretrained import init_from
from boldgpt.models.registry import create_model, load_model, save_model
from image_bold import SMALL, paired_batch, small_model

SIZE = 16  # 4 x 4 patches of 4 px


def bold2image(**overrides):
    return small_model(
        "bold2image_micro_patch10", **{"image_size": SIZE, "image_patch_size": 4, **overrides}
    )


def batch(n: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    return paired_batch(n, SIZE, seed)


def reconstruct(model, b):
    """One-pass images (B, 3, S, S): every image patch queried from the map."""
    d = model.decoder
    B, M = b["activity"].shape[0], d.num_patches
    context = model.bold_context(b["activity"], b["subject_id"])
    empty = torch.zeros(B, M, dtype=torch.bool)
    patches = complete(d, torch.zeros(B, M, d.patchify.dim), empty, context=context, method="query")
    return d.patchify.inverse(patches)


def test_training_step_trains_the_bold_encoder_and_the_decoder():
    model = bold2image().train()
    assert model.config.batch_keys == ("activity", "subject_id", "image")
    out = model(batch())
    out.loss.backward()
    assert out.output.shape == (3, 16, 3 * 4 * 4)  # 16 image patches of 4 x 4 x 3 values
    assert model.backbone.blocks[0].attn.q.weight.grad.abs().sum() > 0  # the BOLD encoder
    assert model.decoder.backbone.blocks[0].cross.q.weight.grad.abs().sum() > 0
    assert model.head is None and "head.weight" not in model.state_dict()


def test_image_queries_train_the_one_pass_reconstruction_of_every_patch():
    """With image_queries, training also scores image patches predicted from the map
    alone (the one-pass reconstruction), not only the first step of each order."""
    plain = bold2image()
    with torch.no_grad():  # a head far from zero: predictions that depend on the inputs
        plain.decoder.head.weight.normal_(std=0.5)
    M = plain.decoder.num_patches
    queried = bold2image(image_queries=M)
    queried.load_state_dict(plain.state_dict())
    b = batch()
    order = torch.arange(M).roll(-3).expand(3, -1)
    with torch.no_grad():
        main = plain.train()(b, order=order).loss
        both = queried.train()(b, order=order)
        one_pass = reconstruct(queried.eval(), b)
    direct = (one_pass - b["image"]).square().mean()  # every pixel of an image counts
    torch.testing.assert_close(both.metrics["image_query_loss"], direct, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(both.loss, (main + direct) / 2, rtol=1e-4, atol=1e-6)
    assert abs(main - direct) > 1e-3
    with pytest.raises(ConfigError, match="image_queries=-2"):
        bold2image(image_queries=-2)


def test_reconstruction_depends_on_the_samples_own_map_only():
    model = bold2image().eval()
    b = batch()
    ref = reconstruct(model, b)
    assert ref.shape == (3, 3, SIZE, SIZE)
    other = dict(b, activity=b["activity"].clone())
    other["activity"][2] += 1.0  # change sample 2's map
    moved = reconstruct(model, other)
    assert (moved[2] - ref[2]).abs().max() > 1e-4
    torch.testing.assert_close(moved[:2], ref[:2])


def test_init_from_a_pretrained_beit_gives_the_encoder_only(tmp_path):
    torch.manual_seed(1)
    beit = create_model("boldbeit_micro_patch10", mask="sim", **SMALL)
    save_model(beit, tmp_path / "beit")
    model = bold2image()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = init_from(model, tmp_path / "beit")
    source, after = beit.state_dict(), model.state_dict()
    for key in after:
        expected = source[key] if key in report.loaded else before[key]
        assert torch.equal(after[key], expected), key
    assert "backbone.blocks.0.attn.q.weight" in report.loaded
    assert not any(k.startswith("decoder.") for k in report.loaded)
    assert "decoder.backbone.blocks.0.cross.q.weight" in report.new
    assert report.skipped["head.weight"] == "name: Bold2Image has no such tensor"


def test_save_load_and_bad_input(tmp_path):
    model = bold2image().eval()
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    b = batch()
    torch.testing.assert_close(reconstruct(loaded, b), reconstruct(model, b))
    del b["image"]
    with pytest.raises(DataError, match=r"Bold2Image needs batch\['image'\] \(B, 3, 16, 16\)"):
        model(b)
    b = batch()
    b["image"] = torch.zeros(3, 1, SIZE, SIZE)
    with pytest.raises(DataError, match=r"\(B, 3, 16, 16\)"):
        model(b)
    with pytest.raises(ConfigError, match="image_patch_size=5: expected a divisor of"):
        bold2image(image_patch_size=5)
