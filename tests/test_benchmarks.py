"""The benchmark suite's own arithmetic (benchmarks/ is not a package: imported by path)."""

import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from bench_models import _build, products_step  # noqa: E402
from common import Row, train_flops_per_sample  # noqa: E402
from run import rescale_to_peak  # noqa: E402


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


def test_products_alone_carry_the_model_flops():
    # the "products alone" row is read against the model FLOPs of the step: its
    # products must be those FLOPs (up to biases and norms), not a subset
    model = _build("boldgpt_micro_patch10", "continuous", "sim", torch.device("cpu"))
    _, flops = products_step(model, 2, torch.device("cpu"))
    assert flops == pytest.approx(2 * train_flops_per_sample(model), rel=0.01)
