"""The benchmark suite's own arithmetic (benchmarks/ is not a package: imported by path)."""

import sys
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from bench_models import _batch, _build, products_step  # noqa: E402
from common import Row  # noqa: E402
from flops import census  # noqa: E402
from run import rescale_to_peak  # noqa: E402

# every family the training benchmark runs: plain, bidirectional, pooled + registers
# beside a frozen image encoder, cross-attention to its tokens
FAMILIES = ("boldgpt", "boldbeit", "cbip", "image2bold")


def _mfu_row(ratio: float, dtype: str, target: float | None) -> Row:
    extra = {"peak_gflops": 86.7, "peak_dtype": dtype, "target_ratio": target}
    met = None if target is None else ratio >= target
    return Row("models", "train", 1.0, "samples/s", ratio=ratio, met=met, extra=extra)


def test_a_slow_first_roofline_does_not_inflate_mfu():
    # the first roofline caught a slow moment (86.7 GFLOP/s), the end one 138.2
    small = _mfu_row(1.04, "float32", 0.90)
    alone = _mfu_row(1.24, "float32", None)
    bf16 = _mfu_row(0.70, "bfloat16", 0.75)
    other = Row("datapath", "maps", 30_000.0, "maps/s", ratio=0.7, extra={})
    rescale_to_peak([small, alone, bf16, other], "float32", 86.7, 138.2)
    assert small.ratio == pytest.approx(1.04 * 86.7 / 138.2)
    assert small.met is False and small.extra["peak_gflops"] == 138.2
    assert alone.ratio == pytest.approx(1.24 * 86.7 / 138.2) and alone.met is None
    assert (bf16.ratio, bf16.met) == (0.70, False)  # another dtype's peak: untouched
    assert other.ratio == 0.7


def _model_and_batch(family: str):
    cpu = torch.device("cpu")
    model = _build(f"{family}_micro_patch10", "continuous", "sim", cpu)
    return model, _batch(model, cpu, 2)


@pytest.mark.parametrize("family", FAMILIES)
def test_model_flops_are_the_products_a_training_step_runs(family):
    # the MFU's model FLOPs against torch's own count of every matrix product of a
    # real forward + backward (the math attention backend: the CPU flash kernel is not
    # counted); biases, norms and the patch embedding's unneeded input gradient make
    # the estimate at most ~1% larger. Counting the cross-attention keys / values by
    # the map's tokens or the frozen image encoder at all overshoots by 10-25%.
    model, batch = _model_and_batch(family)
    estimate = census(model, batch).flops_per_sample() * 2  # (also warms the image cache)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(batch).loss.backward()
    assert estimate == pytest.approx(counter.get_total_flops(), rel=0.015)


@pytest.mark.parametrize("family", FAMILIES)
def test_products_alone_carry_the_model_flops(family):
    # the "products alone" row is read against the model FLOPs of the step: the
    # products it runs (counted by torch) must be those FLOPs (up to biases and norms),
    # not a subset
    model, batch = _model_and_batch(family)
    products = census(model, batch)
    step = products_step(products, torch.device("cpu"))
    with FlopCounterMode(display=False) as counter:
        step()
    assert counter.get_total_flops() == products.product_flops()
    assert products.product_flops() == pytest.approx(2 * products.flops_per_sample(), rel=0.01)
