"""The sparse-convolution backends behind ``SparseOps``, their availability, and ``auto`` selection.

``auto`` order: spconv > minkowski > torch. On this project's reference CPU machine (MEASURED.md) a 3x3x3
convolution took 0.04 s with spconv, 0.10-0.12 s with MinkowskiEngine and 0.09 s with pure PyTorch forward, and
the whole network's per-point feature time is reported by ``bench`` runs; the pure-PyTorch backend is the
fallback that always works (CPU and any CUDA torch).

On a CUDA device ``auto`` skips builds that cannot run there: PyPI's plain ``spconv`` and a MinkowskiEngine built
where no CUDA was found (what ``make install`` makes on a CPU machine) import fine but have no CUDA kernels.
"""

from __future__ import annotations

import importlib
import importlib.metadata

from .sparse import SparseOps

AUTO_ORDER: tuple[str, ...] = ("spconv", "minkowski", "torch")
BACKENDS: tuple[str, ...] = ("torch", "minkowski", "spconv")


def _probe(name: str) -> tuple[bool, str]:
    """(available, version or the reason it is not)."""
    if name == "torch":
        import torch

        return True, torch.__version__
    module = {"minkowski": "MinkowskiEngine", "spconv": "spconv.pytorch"}[name]
    try:
        importlib.import_module(module)
    except Exception as e:  # ImportError, or a broken binary (OSError / undefined symbol)
        return False, f"unavailable: cannot import {module} ({type(e).__name__}: {e})"
    dist = {"minkowski": "MinkowskiEngine", "spconv": "spconv"}[name]
    try:
        return True, importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        for alt in ("spconv-cu126", "spconv-cu124", "spconv-cu121", "spconv-cu120", "spconv-cu118"):
            try:
                return True, importlib.metadata.version(alt)
            except importlib.metadata.PackageNotFoundError:
                continue
        return True, "unknown version"


def cuda_support(name: str) -> tuple[bool, str]:
    """(whether the importable backend ``name`` has CUDA kernels, why not)."""
    if name == "torch":
        return True, ""
    try:
        if name == "minkowski":
            import MinkowskiEngine as ME

            ok = bool(ME.is_cuda_available())
        else:
            from spconv.cppconstants import CPU_ONLY_BUILD

            ok = not CPU_ONLY_BUILD
    except Exception as e:  # an older build without the flag: assume CPU-only rather than fail later on the GPU
        return False, f"cannot tell whether its build has CUDA ({type(e).__name__}: {e})"
    return ok, "" if ok else "its build is CPU-only"


def _usable(name: str, device: str) -> tuple[bool, str]:
    ok, why = _probe(name)
    if ok and str(device).startswith("cuda"):
        ok, why = cuda_support(name)
        why = why and f"unavailable on {device}: {why}"
    return ok, why


def available_backends() -> dict[str, str]:
    """Backend name -> its library version, or ``"unavailable: <reason>"``."""
    return {name: _probe(name)[1] for name in BACKENDS}


def resolve_backend(name: str, device: str = "cpu") -> str:
    """The concrete backend for ``name`` on ``device`` (``auto`` picks the first of ``AUTO_ORDER`` that runs there)."""
    if name == "auto":
        for cand in AUTO_ORDER:
            if _usable(cand, device)[0]:
                return cand
        return "torch"
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose auto or one of {list(BACKENDS)}")
    ok, why = _usable(name, device)
    if not ok:
        raise RuntimeError(f"backend {name!r} is {why}")
    return name


def get_ops(name: str, device: str = "cpu") -> SparseOps:
    """A ``SparseOps`` for a concrete backend name (see ``resolve_backend``)."""
    name = resolve_backend(name, device)
    if name == "torch":
        from .backend_torch import TorchOps

        return TorchOps()
    if name == "minkowski":
        from .backend_minkowski import MinkowskiOps

        return MinkowskiOps(device)
    from .backend_spconv import SpconvOps

    return SpconvOps(device)
