"""Builds structmt's optional C++ attention kernel against the installed torch.

Install with ``pip install --no-build-isolation -e .`` (``make install`` and
``scripts/install_offline.sh`` do), so the extension is compiled for the torch
in the environment.  The kernel is optional: without torch at build time,
without a working C++ compiler (or OpenMP), or with ``STRUCTMT_NO_EXTENSION=1``,
the package still installs, this file says why in one line, and structmt uses
its pure-PyTorch efficient path instead.
"""

import os
import platform

from setuptools import setup

SOURCE = "structmt/attention/csrc/candidates.cpp"


def _say(reason):
    print(f"structmt: C++ kernel not built ({reason}); the pure-PyTorch path is used instead", flush=True)


def _reason(err):
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[-1]}" if lines else type(err).__name__


def _extension():
    """(ext_modules, cmdclass) for the kernel, or nothing when it cannot be built here."""
    if os.environ.get("STRUCTMT_NO_EXTENSION") == "1":
        _say("STRUCTMT_NO_EXTENSION=1")
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        _say("torch is not importable at build time: install torch first, then pip install --no-build-isolation")
        return [], {}

    class OptionalBuildExtension(BuildExtension.with_options(use_ninja=False)):
        """A missing or failing compiler leaves the package installable, without the kernel."""

        def run(self):
            try:
                super().run()
            except Exception as err:  # raised before any extension was compiled (compiler checks)
                _say(_reason(err))
                self.extensions = []

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as err:  # no compiler, no OpenMP, headers that do not match, ...
                _say(_reason(err))
                # an editable install must not point at a library that was never written, nor keep one built from
                # an older source (it would still import and run the old kernel)
                self.extensions = [e for e in self.extensions if e is not ext]
                name = os.path.basename(self.get_ext_filename(ext.name))
                for stale in {
                    self.get_ext_fullpath(ext.name),
                    os.path.join(os.path.dirname(__file__), "structmt", name),
                }:
                    if os.path.exists(stale):
                        os.remove(stale)
                        print(f"structmt: removed {stale}, built from an older source", flush=True)

    ext = CppExtension(
        "structmt._kernels",
        [SOURCE],
        extra_compile_args=["-O3", "-fopenmp"] + (["-march=x86-64-v2"] if platform.machine() == "x86_64" else []),
        extra_link_args=["-fopenmp"],
    )
    return [ext], {"build_ext": OptionalBuildExtension}


ext_modules, cmdclass = _extension()
# the kernel's source travels in the sdist even when this machine cannot build it
setup(ext_modules=ext_modules, cmdclass=cmdclass, package_data={"structmt": ["attention/csrc/*.cpp"]})
