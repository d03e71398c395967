import numpy as np
import pytest
import torch

from boldgpt.errors import ConfigError
from boldgpt.models.beit import BEiT
from boldgpt.models.config import BEiTConfig


def small_mask(h: int = 40, w: int = 50) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return ((yy - h / 2) / (h / 2.3)) ** 2 + ((xx - w / 2) / (w / 2.2)) ** 2 < 1


def make_model(**kw) -> BEiT:
    args = dict(patch_size=10, embed_dim=32, depth=2, num_heads=4, num_subjects=4)
    args.update(kw)
    torch.manual_seed(0)
    return BEiT(BEiTConfig(**args), small_mask()).eval()


def make_batch(model: BEiT, B: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    mask = model.patchify.mask
    return {
        "activity": torch.randn(B, *mask.shape, generator=g) * mask,
        "subject_id": torch.arange(B) % 4,
    }


def half_mask(model: BEiT, B: int = 3) -> torch.Tensor:
    N = model.num_patches
    g = torch.Generator().manual_seed(2)
    return torch.stack([torch.randperm(N, generator=g) < N // 2 for _ in range(B)])


def test_loss_ignores_visible_patches():
    model = make_model()
    batch = make_batch(model)
    mask = half_mask(model)
    out = model(batch, mask=mask)
    # predictions at visible slots are not scored: shifting them changes nothing
    visible = (~mask)[..., None].float()
    hook = model.head.register_forward_hook(lambda m, i, o: o + 50.0 * visible)
    try:
        shifted = model(batch, mask=mask).loss
    finally:
        hook.remove()
    assert torch.allclose(out.loss, shifted)
    # ... and it is the in-mask MSE over masked patches
    m = model.patchify.patch_mask & mask[..., None]
    expected = (out.output - out.target)[m].square().mean()
    assert torch.allclose(out.loss, expected, atol=1e-6)


def test_masked_patches_do_not_leak_into_the_input():
    model = make_model()
    batch = make_batch(model)
    mask = half_mask(model)
    out = model(batch, mask=mask).output
    p = model.patchify
    patches = p(batch["activity"])
    patches[mask] += 5.0
    out2 = model(dict(batch, activity=p.inverse(patches)), mask=mask).output
    assert torch.allclose(out, out2, atol=1e-6)


def test_attention_is_bidirectional():
    model = make_model()
    batch = make_batch(model, B=1)
    N = model.num_patches
    mask = torch.zeros(1, N, dtype=torch.bool)
    mask[0, 0] = True  # predict the first slot from all the others
    out = model(batch, mask=mask).output
    p = model.patchify
    patches = p(batch["activity"])
    patches[0, N - 1] += 3.0  # the last slot in the fixed order
    out2 = model(dict(batch, activity=p.inverse(patches)), mask=mask).output
    assert not torch.allclose(out[0, 0], out2[0, 0], atol=1e-4)


def test_fixed_mask_ratio_masks_exactly_that_share():
    model = make_model(mask_ratio=0.25)
    N = model.num_patches
    torch.manual_seed(0)
    mask = model.random_mask(50)
    assert (mask.sum(1) == round(0.25 * N)).all()
    # different samples get different subsets
    assert len({tuple(row.tolist()) for row in mask}) > 40


def test_random_mask_ratio_varies_per_sample_within_bounds():
    model = make_model(mask_ratio=[0.0, 0.5])
    N = model.num_patches
    torch.manual_seed(0)
    counts = model.random_mask(400).sum(1)
    assert counts.min() >= 1 and counts.max() <= round(0.5 * N)
    assert len(counts.unique()) >= N // 2 - 1


def test_masks_come_from_the_global_rng():
    model = make_model().train()
    batch = make_batch(model)
    torch.manual_seed(7)
    a = model(batch).mask
    torch.manual_seed(7)
    b = model(batch).mask
    assert torch.equal(a, b)


def test_categorical_loss_on_masked_tokens_only():
    model = make_model(categorical=True, vocab_size=12)
    model.tokenizer.vocab.copy_(torch.randn(12, model.patchify.dim))
    batch = make_batch(model)
    mask = half_mask(model)
    out = model(batch, mask=mask)
    logp = out.output.log_softmax(-1)
    nll = -logp.gather(-1, out.target[..., None])[..., 0]
    assert torch.allclose(out.loss, nll[mask].mean(), atol=1e-5)
    hits = (out.output.argmax(-1) == out.target)[mask].float().mean()
    assert torch.allclose(out.metrics["accuracy"], hits)


@pytest.mark.parametrize("ratio", [1.5, [0.6, 0.2], [0.1, 0.2, 0.3]])
def test_bad_mask_ratio_raises(ratio):
    with pytest.raises(ConfigError, match="mask_ratio"):
        make_model(mask_ratio=ratio)


def test_bad_mask_argument_raises():
    model = make_model()
    with pytest.raises(ValueError, match="mask must be bool"):
        model(make_batch(model), mask=torch.zeros(3, model.num_patches))
