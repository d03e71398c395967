"""The package's one native piece, built at install where it applies: a tiny shared
library that lets Intel MKL (torch's CPU matrix products) use its optimised kernels on
AMD x86-64 CPUs (see ``src/boldgpt/utils/mkl.py``). Optional: without a C compiler the
package installs without it and MKL keeps its generic code there."""

import platform
import sys

from setuptools import Extension, setup

native = []
if sys.platform.startswith("linux") and platform.machine().lower() in ("x86_64", "amd64"):
    native.append(
        Extension(
            "boldgpt.utils._mkl_intel_cpu",
            ["src/boldgpt/utils/_mkl_intel_cpu.c"],
            optional=True,
        )
    )

setup(ext_modules=native)
