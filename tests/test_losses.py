"""Contrastive losses (boldgpt.models.losses) on tiny inputs whose values are worked out
by hand below, duplicates of a stimulus included, and their data parallel gather."""

from __future__ import annotations

import math

import pytest
import torch
import torch.multiprocessing as mp

from boldgpt.errors import ConfigError
from boldgpt.models.losses import (
    ClipLoss,
    CosineLoss,
    SigLipLoss,
    gather_embeddings,
    make_contrastive_loss,
)

LN2 = math.log(2)


def clip_with_scale(scale: float) -> ClipLoss:
    loss = ClipLoss()
    with torch.no_grad():
        loss.log_scale.fill_(math.log(scale))
    return loss


# Three trials; trials 0 and 2 show the same stimulus (id 7). After normalisation the
# BOLD embeddings are e0, e1, e1 and the image embeddings e0, e1, e0 (image 2 is image
# 0 scaled by 3), so the cosine similarities are
#     s = [[1, 0, 1],
#          [0, 1, 0],
#          [0, 1, 0]]
# and with scale t = ln 2 every exp(t * s) is 2 (s = 1) or 1 (s = 0).
BOLD = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 2.0]])
IMAGE = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
IDS = torch.tensor([7, 8, 7])


def test_clip_counts_every_trial_of_a_stimulus_as_a_positive():
    loss, metrics = clip_with_scale(LN2)(BOLD, IMAGE, IDS)
    # BOLD -> image rows (targets: row 0 and 2 -> {0, 2} half each, row 1 -> {1}):
    #   row 0: exps [2, 1, 2], Z = 5: -(0.5 ln(2/5) + 0.5 ln(2/5)) = -ln 0.4
    #   row 1: exps [1, 2, 1], Z = 4: -ln(2/4)                      = ln 2
    #   row 2: exps [1, 2, 1], Z = 4: -(0.5 ln(1/4) + 0.5 ln(1/4)) = 2 ln 2
    rows = (-math.log(0.4) + LN2 + 2 * LN2) / 3
    # image -> BOLD (columns of s):
    #   col 0 = [1, 0, 0]: exps [2, 1, 1], Z = 4, targets {0, 2}: -(0.5 ln(2/4) + 0.5 ln(1/4))
    #   col 1 = [0, 1, 1]: exps [1, 2, 2], Z = 5, target {1}: -ln(2/5)
    #   col 2 = [1, 0, 0]: same as col 0
    cols = (1.5 * LN2 - math.log(0.4) + 1.5 * LN2) / 3
    assert loss.item() == pytest.approx((rows + cols) / 2, rel=1e-6)
    # retrieval: rows 0 and 1 pick a positive, row 2's best image (1) is not
    assert metrics["top1"].item() == pytest.approx(2 / 3)
    assert metrics["scale"].item() == pytest.approx(LN2)


def test_clip_without_stimulus_ids_uses_the_diagonal():
    loss, _ = clip_with_scale(LN2)(BOLD, IMAGE)
    # rows: row 0 target {0}: -ln(2/5); row 1: -ln(2/4); row 2 target {2}: -ln(1/4)
    rows = (-math.log(0.4) + LN2 + 2 * LN2) / 3
    # cols: col 0 target {0}: -ln(2/4); col 1: -ln(2/5); col 2 target {2}: -ln(1/4)
    cols = (LN2 - math.log(0.4) + 2 * LN2) / 3
    assert loss.item() == pytest.approx((rows + cols) / 2, rel=1e-6)


def test_clip_temperature_is_learned_and_clamped():
    loss = ClipLoss(init_temperature=0.07)
    assert loss.log_scale.exp().item() == pytest.approx(1 / 0.07)
    value, _ = loss(BOLD, IMAGE, IDS)
    value.backward()
    assert loss.log_scale.grad is not None and loss.log_scale.grad.abs() > 0
    with torch.no_grad():
        loss.log_scale.fill_(math.log(1e4))
    assert loss(BOLD, IMAGE, IDS)[1]["scale"].item() == pytest.approx(100.0)


def test_siglip_duplicates_are_positives():
    loss = SigLipLoss(init_scale=2.0, init_bias=-1.0)
    bold = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # the same stimulus twice: the same image embedding; s = [[1, 1], [0, 0]]
    same = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    value, _ = loss(bold, same, torch.tensor([5, 5]))
    # logits 2 s - 1 = [[1, 1], [-1, -1]], all four pairs positive (z = +1):
    # -(2 ln sigmoid(1) + 2 ln sigmoid(-1)) / 2
    log_sig = lambda x: -math.log(1 + math.exp(-x))  # noqa: E731
    assert value.item() == pytest.approx(-(log_sig(1) + log_sig(-1)), rel=1e-6)
    # two stimuli: s = I, logits [[1, -1], [-1, 1]], z = [[1, -1], [-1, 1]],
    # so z * logits = 1 everywhere: -4 ln sigmoid(1) / 2
    value, metrics = loss(bold, bold, torch.tensor([5, 6]))
    assert value.item() == pytest.approx(-2 * log_sig(1), rel=1e-6)
    assert metrics["top1"].item() == 1.0
    value.backward()
    assert loss.bias.grad is not None and loss.log_scale.grad is not None


def test_cosine_loss():
    bold = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    image = torch.tensor([[1.0, 0.0], [0.0, -2.0]])
    value, _ = CosineLoss()(bold, image)
    # cos = 3/5 and -1: mean(1 - 0.6, 1 + 1) = 1.2
    assert value.item() == pytest.approx(1.2, rel=1e-6)


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match=r"same shape \(B, C\)"):
        ClipLoss()(BOLD, IMAGE[:2])
    with pytest.raises(ValueError, match=r"stimulus_id must be integers of shape \(3,\)"):
        ClipLoss()(BOLD, IMAGE, torch.tensor([1, 2]))
    with pytest.raises(ConfigError, match="one of"):
        make_contrastive_loss("triplet")
    assert gather_embeddings(BOLD) is BOLD  # not distributed: a no-op


# ---- data parallel: two gloo processes, half the batch each ----------------------------


def _ddp_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    bold = torch.randn(4, 5, generator=g)
    image = torch.randn(4, 5, generator=g)
    return bold, image, torch.tensor([1, 2, 1, 3])  # a duplicate across the two ranks


def _worker(rank: int, out_dir: str) -> None:
    import torch.distributed as dist

    from boldgpt.engine.distributed import shutdown

    dist.init_process_group("gloo", init_method=f"file://{out_dir}/init", rank=rank, world_size=2)
    bold, image, ids = _ddp_inputs()
    results = {}
    for name in ("clip", "siglip"):
        loss = make_contrastive_loss(name)
        b = bold[2 * rank : 2 * rank + 2].clone().requires_grad_(True)
        value, _ = loss(b, image[2 * rank : 2 * rank + 2], ids[2 * rank : 2 * rank + 2])
        value.backward()
        results[name] = (value.item(), b.grad.clone(), loss.log_scale.grad.item())
        local, _ = loss(
            b, image[2 * rank : 2 * rank + 2], ids[2 * rank : 2 * rank + 2], gather=False
        )
        results[name + " local"] = local.item()
    torch.save(results, f"{out_dir}/rank{rank}.pt")
    # Not a plain destroy_process_group: gloo on CPU aborts at interpreter exit in
    # about 3 of 10 runs; shutdown() leaves the group and ends the process at once.
    # On an error above the process raises instead, and mp.spawn reports it.
    shutdown()


@pytest.mark.slow
def test_gathered_losses_and_gradients_match_one_process(tmp_path):
    """Each rank computes the global loss; its local embeddings get world_size x the
    single-process gradient (the sum over every rank's loss), which DDP's averaging
    brings back to exactly the single-process gradient. ``gather=False``: the loss of
    the rank's own trials."""
    mp.spawn(_worker, args=(str(tmp_path),), nprocs=2, join=True)
    bold, image, ids = _ddp_inputs()
    for name in ("clip", "siglip"):
        loss = make_contrastive_loss(name)
        b = bold.clone().requires_grad_(True)
        ref, _ = loss(b, image, ids)
        ref.backward()
        for rank in (0, 1):
            value, grad, scale_grad = torch.load(tmp_path / f"rank{rank}.pt")[name]
            assert value == pytest.approx(ref.item(), rel=1e-5)
            torch.testing.assert_close(grad / 2, b.grad[2 * rank : 2 * rank + 2])
            assert scale_grad == pytest.approx(loss.log_scale.grad.item(), rel=1e-5)
            part = slice(2 * rank, 2 * rank + 2)
            alone, _ = loss(bold[part], image[part], ids[part])  # this rank's trials only
            local = torch.load(tmp_path / f"rank{rank}.pt")[name + " local"]
            assert local == pytest.approx(alone.item(), rel=1e-5)
