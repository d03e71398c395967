"""MKL's optimised kernels on AMD CPUs (boldgpt.utils.mkl): when the library is loaded,
and that MKL then really runs other kernels, with correct products."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from boldgpt.utils import mkl
from boldgpt.utils.machine import cpu_vendor

INTEL = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel Xeon\n"
AMD = INTEL.replace("GenuineIntel", "AuthenticAMD").replace("Intel Xeon", "AMD EPYC")


def test_cpu_vendor_reads_the_first_processor():
    assert cpu_vendor(AMD) == "AuthenticAMD"
    assert cpu_vendor(INTEL + "\nprocessor\t: 1\nvendor_id\t: AuthenticAMD\n") == "GenuineIntel"
    assert cpu_vendor("processor\t: 0\nBogoMIPS\t: 50.00\n") is None  # ARM


def test_load_decides_by_vendor_environment_and_import_order(monkeypatch):
    monkeypatch.delenv(mkl.ENV_VAR, raising=False)
    assert mkl._load(INTEL) == "not needed (GenuineIntel)"
    assert mkl._load("processor\t: 0\n") == "not applicable (CPU vendor unknown)"
    # this test process imported torch long ago: too late to change what MKL bound to
    assert mkl._load(AMD).startswith("off (torch was imported before boldgpt")
    monkeypatch.setenv(mkl.ENV_VAR, "0")
    assert mkl._load(AMD) == f"off ({mkl.ENV_VAR}=0)"


def _status_in_new_process(imports: str, fast_mkl: str | None = None) -> dict:
    code = (
        f"import json; {imports}\n"
        "from boldgpt.utils.mkl import mkl_status\n"
        "torch.manual_seed(0)\n"
        "a, b = torch.randn(300, 200), torch.randn(200, 100)\n"
        "exact = a.double() @ b.double()\n"
        "err = ((a @ b).double() - exact).abs().max().item() / exact.abs().max().item()\n"
        "print(json.dumps({**mkl_status(), 'err': err}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != mkl.ENV_VAR}
    if fast_mkl is not None:
        env[mkl.ENV_VAR] = fast_mkl
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


needs_amd_mkl = pytest.mark.skipif(
    cpu_vendor() != "AuthenticAMD"
    or not torch.backends.mkl.is_available()
    or mkl.library_path() is None,
    reason="needs an AMD CPU, a torch built with MKL and the library built at install",
)


@needs_amd_mkl
def test_import_boldgpt_first_gives_mkl_its_optimised_kernels_with_correct_products():
    on = _status_in_new_process("import boldgpt, torch")
    assert on["fast_mkl"] == "on"
    assert on["mkl_kernels"] in ("avx2", "avx512", "avx512_e1"), on
    assert on["err"] < 1e-5, on  # float32 rounding, not garbage from a wrong kernel
    # without the library MKL reports (and runs) its generic code on this CPU
    off = _status_in_new_process("import boldgpt, torch", fast_mkl="0")
    assert off["fast_mkl"] == "off (BOLDGPT_FAST_MKL=0)", off
    assert off["mkl_kernels"].startswith("generic"), off
    assert off["err"] < 1e-5, off


@needs_amd_mkl
def test_torch_imported_first_leaves_mkl_generic_and_says_why():
    late = _status_in_new_process("import torch, boldgpt")
    assert late["fast_mkl"].startswith("off (torch was imported before boldgpt"), late
    assert late["mkl_kernels"].startswith("generic"), late
