"""image2bold (boldgpt.models.image2bold): training step with a frozen image encoder,
one-pass prediction through generate.complete(method="query") that depends on the
sample's own picture only, starting from a pretrained boldGPT, bad input."""

from __future__ import annotations

import pytest
import torch

from boldgpt.errors import ConfigError, DataError
from boldgpt.generate import complete
from boldgpt.models.pretrained import init_from
from boldgpt.models.registry import create_model, load_model, save_model
from image_bold import SMALL, paired_batch, save_image_encoder, small_model

SIZE = 32
ENCODER = ""


@pytest.fixture(scope="module", autouse=True)
def encoder_dir(tmp_path_factory):
    """A small pretrained-image-model directory, the frozen encoder of these tests."""
    global ENCODER
    ENCODER = save_image_encoder(tmp_path_factory.mktemp("enc"), SIZE)
    return ENCODER


def image2bold(**overrides):
    return small_model(
        "image2bold_micro_patch10", **{"image_size": SIZE, "image_encoder": ENCODER, **overrides}
    )


def batch(n: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    return paired_batch(n, SIZE, seed, torch.arange(n) + 100)


def test_training_step_trains_cross_attention_not_the_encoder():
    model = image2bold().train()
    assert model.config.context_dim == model.image_encoder.embed_dim == 32
    out = model(batch())
    out.loss.backward()
    assert out.output.shape == (3, model.num_patches, 100)
    assert all(p.grad is None for p in model.image_encoder.parameters())
    assert model.backbone.blocks[0].cross.q.weight.grad.abs().sum() > 0
    assert model.backbone.cross_embed.weight.grad.abs().sum() > 0


def predict(model, b):
    """One-pass maps' patches (B, N, P): every slot queried from picture + subject."""
    B, N, P = b["activity"].shape[0], model.num_patches, model.patchify.dim
    context = model.image_context(b["image"])
    empty = torch.zeros(B, N, dtype=torch.bool)
    return complete(
        model, torch.zeros(B, N, P), empty, subject_id=b["subject_id"], context=context,
        method="query",
    )  # fmt: skip


def test_prediction_depends_on_the_samples_own_picture_only():
    model = image2bold().eval()
    b = batch()
    ref = predict(model, b)
    other = dict(b, image=b["image"].clone())
    other["image"][1] += 1.0  # change sample 1's picture
    moved = predict(model, other)
    assert (moved[1] - ref[1]).abs().max() > 1e-4
    torch.testing.assert_close(moved[[0, 2]], ref[[0, 2]])
    # the one-pass estimate of a slot = the model's first prediction when that slot
    # comes first in the order (on the slot's in-mask pixels)
    order = torch.arange(model.num_patches).roll(-5).expand(3, -1)
    with torch.no_grad():
        first = model(b, order=order).output[:, 0]
    inside = model.patchify.patch_mask[5]
    assert inside.sum() > 0
    torch.testing.assert_close(first[:, inside], ref[:, 5, inside], rtol=1e-4, atol=1e-5)


def test_image_queries_train_the_one_pass_prediction_of_every_slot():
    """With image_queries, training also scores slots predicted from the picture and
    the subject alone (the path of the one-pass map of an unseen picture), not only
    the first step of each order."""
    plain = image2bold()
    with torch.no_grad():  # a head far from zero: predictions that depend on the inputs
        plain.head.weight.normal_(std=0.5)
    N = plain.num_patches
    queried = image2bold(image_queries=N)
    queried.load_state_dict(plain.state_dict())
    b = batch()
    order = torch.arange(N).roll(-7).expand(3, -1)
    with torch.no_grad():
        main = plain.train()(b, order=order).loss
        both = queried.train()(b, order=order)
        # every slot once, each from the empty prompt: the one-pass map, in-mask MSE
        one_pass = predict(queried.eval(), b)
    patches = queried.patchify(b["activity"])
    inside = queried.patchify.patch_mask.expand(3, -1, -1)
    direct = (one_pass - patches)[inside].square().mean()
    torch.testing.assert_close(both.metrics["image_query_loss"], direct, rtol=1e-4, atol=1e-6)
    # one mean over N next-patch and N image-query predictions
    torch.testing.assert_close(both.loss, (main + direct) / 2, rtol=1e-4, atol=1e-6)
    assert abs(main - direct) > 1e-3  # the two terms differ: the test can tell them apart
    # the image queries pass their gradient to the cross-attention and the queries
    queried.train().zero_grad()
    queried(b, order=order).loss.backward()
    assert queried.backbone.blocks[0].cross.q.weight.grad.abs().sum() > 0
    # evaluation scores no image queries
    with torch.no_grad():
        torch.testing.assert_close(
            queried.eval()(b, order=order).loss, plain.eval()(b, order=order).loss
        )
    with pytest.raises(ConfigError, match="image_queries=-1"):
        image2bold(image_queries=-1)


def test_init_from_a_pretrained_boldgpt_transfers_exactly_what_it_reports(tmp_path):
    torch.manual_seed(1)
    boldgpt = create_model("boldgpt_micro_patch10", mask="sim", **SMALL)
    save_model(boldgpt, tmp_path / "boldgpt")
    model = image2bold()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = init_from(model, tmp_path / "boldgpt")
    source = boldgpt.state_dict()
    after = model.state_dict()
    for key in after:
        expected = source[key] if key in report.loaded else before[key]
        assert torch.equal(after[key], expected), key
    assert {"head.weight", "backbone.next_pos_query", "backbone.pos_embed"} <= set(report.loaded)
    cross = {"backbone.cross_embed.weight", "backbone.blocks.0.cross.q.weight"}
    assert cross <= set(report.new)
    assert report.skipped == {
        k: "patching geometry: the model's own (checked equal)"
        for k in source
        if k.startswith("patchify.")
    }


def test_save_load_and_bad_input(tmp_path):
    model = image2bold().eval()
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    b = batch()
    torch.testing.assert_close(predict(loaded, b), predict(model, b))
    del b["image"]
    with pytest.raises(DataError, match=r"Image2BOLD needs batch\['image'\] \(B, 3, 32, 32\)"):
        model(b)
    with pytest.raises(ConfigError, match="gives 32-wide features"):
        image2bold(context_dim=64)
    with pytest.raises(ConfigError, match="reads BOLD maps"):
        image2bold(input_key="image", image_size=40)


def test_the_shipped_config_trains_the_one_pass_path_of_every_slot():
    """configs/image2bold_micro.yaml keeps image_queries at every slot: without it the
    one-pass encoding map trains on 1 prediction in N (sim:demo, 300 steps, one
    random encoder, subject 0: held-out r 0.19 without, 0.28 with every slot)."""
    from pathlib import Path

    import yaml

    path = Path(__file__).resolve().parents[1] / "configs" / "image2bold_micro.yaml"
    kwargs = yaml.safe_load(path.read_text())["model"]["kwargs"]
    model = small_model(
        "image2bold_micro_patch10", image_size=SIZE, image_encoder=ENCODER,
        image_queries=kwargs["image_queries"],
    )  # fmt: skip
    assert model.config.image_queries >= model.num_patches


def test_estimate_flops_counts_the_map_side_not_the_frozen_encoder():
    # 3 x forward FLOPs against torch's count of a real forward + backward (math
    # attention: the CPU flash kernel is not counted) once the encoder's outputs are
    # cached; 3x is a few % high on a model this narrow (the patch embedding and the
    # context projection need no input gradient). Counting the encoder's weights per
    # map token made it 2.8x.
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    model = image2bold().train()
    b = batch(2)
    model(b)  # fills the per-stimulus cache
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(b).loss.backward()
    M = model.image_encoder.num_tokens
    estimate = 3 * model.estimate_flops(context_len=M) * 2
    assert estimate == pytest.approx(counter.get_total_flops(), rel=0.05)
