"""Refuse to load the compiled extension under a torch it was not built against.

A C++ extension links against libtorch's C++ symbols, which change between torch releases: loaded
under another torch it fails with an ``undefined symbol`` error that names neither version, or
worse, loads and misbehaves. setup.py records the torch it compiled against in
``_build_info.py`` (written next to ``_C`` at build time, never committed); ``check()`` compares
it with the running torch before ``_C`` is loaded, and ``explain_load_error()`` names both
versions when loading fails anyway.
"""
from __future__ import annotations

import torch

from ._version import __version__

_REBUILD = ("rebuild domino-kernels against the installed torch (from a checkout: "
            "`pip install --no-build-isolation -e .`; from PyPI: `pip install --no-build-isolation "
            "--no-binary domino-kernels --force-reinstall --no-deps domino-kernels`), or install the torch it was "
            "built against")


def _release(version: str) -> str:
    """'2.13.0+cpu' -> '2.13.0': the local tag names the build flavour, not the C++ ABI."""
    return str(version).split("+", 1)[0]


def built_against() -> dict | None:
    """What ``_C`` was compiled against (TORCH_VERSION, CUDA_VERSION, WITH_CUDA), or None when this
    build did not record it (a build by a tool other than setup.py)."""
    try:
        from . import _build_info
    except ImportError:
        return None
    return {"TORCH_VERSION": _build_info.TORCH_VERSION, "CUDA_VERSION": _build_info.CUDA_VERSION,
            "WITH_CUDA": _build_info.WITH_CUDA}


def mismatch(built: dict, torch_version: str, torch_cuda: str | None) -> str | None:
    """Why an extension built as ``built`` cannot load under this torch, or None when it can: the
    torch release (major.minor.patch) must be equal, and a build with CUDA kernels needs a CUDA
    torch of the same CUDA major version."""
    have = f"torch {torch_version}" + (f" (CUDA {torch_cuda})" if torch_cuda else " (no CUDA)")
    want = f"torch {built['TORCH_VERSION']}" + (f" (CUDA {built['CUDA_VERSION']})" if built["CUDA_VERSION"] else "")
    if _release(built["TORCH_VERSION"]) != _release(torch_version):
        return (f"domino_kernels {__version__} was built against {want}, but {have} is installed: "
                f"its compiled extension only loads under the torch release it was built against; {_REBUILD}")
    if built["WITH_CUDA"]:
        if not torch_cuda:
            return (f"domino_kernels {__version__} was built with CUDA kernels against {want}, but {have} "
                    f"is installed; {_REBUILD}")
        if built["CUDA_VERSION"] and str(built["CUDA_VERSION"]).split(".")[0] != str(torch_cuda).split(".")[0]:
            return (f"domino_kernels {__version__} was built against {want}, but {have} is installed: "
                    f"the CUDA major versions differ; {_REBUILD}")
    return None


def check() -> None:
    """Raise ImportError naming both versions when the running torch cannot load ``_C``."""
    built = built_against()
    if built is not None:
        msg = mismatch(built, torch.__version__, torch.version.cuda)
        if msg is not None:
            raise ImportError(msg)


def explain_load_error(err: ImportError) -> ImportError:
    """A load failure of ``_C`` (e.g. an undefined libtorch symbol) restated with the versions."""
    built = built_against()
    was = f"built against torch {built['TORCH_VERSION']}" if built else "built against an unrecorded torch"
    return ImportError(f"domino_kernels {__version__}: loading the compiled extension failed ({was}, "
                       f"running torch {torch.__version__}): {err}. If the versions differ, {_REBUILD}.")
