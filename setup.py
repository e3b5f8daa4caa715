"""Builds structmt's C++ attention kernel against the installed torch.

Install with ``pip install --no-build-isolation -e .`` (``make install`` does),
so the extension is compiled for the torch in the environment.  Without a
compiler or torch at build time the package still installs, and structmt
falls back to its pure-PyTorch efficient path.
"""

import os
import platform

from setuptools import setup

ext_modules, cmdclass = [], {}
if os.environ.get("STRUCTMT_NO_EXTENSION") != "1":
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension

        ext_modules = [
            CppExtension(
                "structmt._kernels",
                ["structmt/attention/csrc/candidates.cpp"],
                extra_compile_args=["-O3", "-fopenmp"]
                + (["-march=x86-64-v2"] if platform.machine() == "x86_64" else []),
                extra_link_args=["-fopenmp"],
            )
        ]
        cmdclass = {"build_ext": BuildExtension.with_options(use_ninja=False)}
    except ImportError:
        print("structmt: torch is not importable at build time; the C++ kernel is not built")

setup(ext_modules=ext_modules, cmdclass=cmdclass)
