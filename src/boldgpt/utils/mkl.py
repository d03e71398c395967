"""Intel MKL's optimised kernels on AMD CPUs.

torch's x86-64 CPU builds run their float32 matrix products through Intel MKL, which
uses its optimised kernels only when its own function ``mkl_serv_intel_cpu_true()``
says the CPU is an Intel one. On an AMD CPU it says no and MKL runs generic code, although
the CPU has every instruction those kernels use. ``_mkl_intel_cpu.c`` (built at install,
see ``setup.py``) defines that function to say yes; loaded into the process's global
symbol scope before torch is, it is the definition torch's MKL binds to, and MKL then
picks among its kernels by the CPU's feature flags as it does on Intel CPUs (AVX2 on Zen 3,
AVX-512 on Zen 4).

On the 2-core AMD EPYC (Zen 3) development machine (``benchmarks/mkl_ab.py``, medians of
alternated process pairs; see ``benchmarks/RESULTS.md``) training steps of the tiny and
small boldGPT ran 1.08x and 1.09x faster, KV-cache sampling of tiny maps 1.17x / 1.06x /
1.37x at batch 1 / 4 / 64, and single products of a training step's shapes 1.0-1.9x. Results
differ from the generic kernels' by float rounding only (the products' summation order).

``import boldgpt`` calls :func:`enable_fast_mkl`, which loads the library when

- the CPU is an AMD one (``vendor_id`` in ``/proc/cpuinfo``; Intel CPUs pass MKL's check
  already),
- torch has not been imported yet (MKL's check is bound when torch loads: import
  ``boldgpt`` first),
- the environment variable ``BOLDGPT_FAST_MKL`` is not ``0``, and
- the library was built (a C compiler at install; Linux x86-64 only).

:func:`mkl_status` says whether it is on and which kernels MKL chose.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import os
import sys
from pathlib import Path

from boldgpt.utils.machine import cpu_vendor

ENV_VAR = "BOLDGPT_FAST_MKL"
"""Set to ``0`` to leave MKL's own CPU check alone."""

_LIBRARY = "_mkl_intel_cpu"

# MKL's conditional-numerical-reproducibility branch constants (mkl_cbwr.h): the kernel
# family MKL's automatic dispatch picks. 2 ("auto") is what it reports for a CPU it does
# not treat as an Intel one, i.e. when it runs its generic code.
_BRANCHES = {
    2: "generic (CPU not treated as Intel)",
    3: "compatible",
    4: "sse2",
    6: "ssse3",
    7: "sse4_1",
    8: "sse4_2",
    9: "avx",
    10: "avx2",
    11: "avx512_mic",
    12: "avx512",
    13: "avx512_mic_e1",
    14: "avx512_e1",
}

_status: str | None = None


def library_path() -> Path | None:
    """The built library next to this file, or None where it was not built."""
    here = Path(__file__).parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = here / f"{_LIBRARY}{suffix}"
        if path.is_file():
            return path
    return None


def _load(cpuinfo: str | None = None) -> str:
    """The decision and the loading; ``cpuinfo``: the text of ``/proc/cpuinfo`` (tests)."""
    if os.environ.get(ENV_VAR, "").strip() == "0":
        return f"off ({ENV_VAR}=0)"
    vendor = cpu_vendor(cpuinfo)
    if vendor is None:
        return "not applicable (CPU vendor unknown)"
    if vendor != "AuthenticAMD":
        return f"not needed ({vendor})"
    if "torch" in sys.modules:
        return "off (torch was imported before boldgpt; import boldgpt first)"
    path = library_path()
    if path is None:
        return "off (not built: no C compiler at install)"
    try:
        ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    except OSError as err:
        return f"off (could not load {path.name}: {err})"
    return "on"


def enable_fast_mkl() -> str:
    """Let MKL use its optimised kernels on this CPU where it needs telling (see the
    module's docstring); once per process. Returns the status :func:`mkl_status`
    reports: ``"on"``, or why not (``"off (...)"``, ``"not needed (GenuineIntel)"``,
    ``"not applicable (CPU vendor unknown)"``)."""
    global _status
    if _status is None:
        _status = _load()
    return _status


def mkl_code_path() -> str | None:
    """The kernel family torch's MKL chose here (``"avx2"``, ``"avx512"``, or
    ``"generic (CPU not treated as Intel)"``); None where torch has no MKL or does not
    expose the query. Imports torch."""
    import torch

    if not torch.backends.mkl.is_available():
        return None
    libraries = [Path(torch.__file__).parent / "lib" / "libtorch_cpu.so", None]
    for library in libraries:
        if library is not None and not library.is_file():
            continue
        try:
            handle = ctypes.CDLL(None if library is None else str(library))
        except OSError:
            continue
        for name in ("mkl_cbwr_get_auto_branch", "mkl_serv_cbwr_get_auto_branch"):
            query = getattr(handle, name, None)
            if query is not None:
                branch = int(query())
                return _BRANCHES.get(branch, f"branch {branch}")
    return None


def mkl_status() -> dict[str, str | None]:
    """``{"fast_mkl": status of enable_fast_mkl, "mkl_kernels": mkl_code_path()}``, for
    the records benchmarks and the demo keep beside their timings. Imports torch."""
    return {"fast_mkl": enable_fast_mkl(), "mkl_kernels": mkl_code_path()}
