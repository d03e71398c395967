"""The CPU line that benchmarks and the demo record beside their timings."""

from __future__ import annotations

from boldgpt.utils.machine import cpu_description

ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx f16c avx2 sha_ni

processor\t: 1
model name\t: something else
flags\t\t: avx512f
"""

ZEN4 = ZEN3.replace("model\t\t: 1", "model\t\t: 17").replace(
    "avx2 sha_ni", "avx2 avx512f avx512_bf16 avx512vl"
)


def test_cpu_description_names_family_model_and_vector_extensions():
    # only the first processor's block counts (the second says avx512f: not reported)
    assert cpu_description(ZEN3) == "AMD EPYC (family 25, model 1; avx2)"
    assert cpu_description(ZEN4) == "AMD EPYC (family 25, model 17; avx2 avx512f avx512_bf16)"
    # an ARM /proc/cpuinfo has no model name, family or x86 flags
    arm = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd\n"
    assert "family" not in cpu_description(arm) and "(" not in cpu_description(arm)
