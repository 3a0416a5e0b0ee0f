"""The sparse-convolution backends behind ``SparseOps``, their availability, and ``auto`` selection.

``auto`` order: spconv > minkowski > torch. On this project's reference CPU machine (MEASURED.md) a 3x3x3
convolution took 0.04 s with spconv, 0.10-0.12 s with MinkowskiEngine and 0.09 s with pure PyTorch forward, and
the whole network's per-point feature time is reported by ``bench`` runs; the pure-PyTorch backend is the
fallback that always works (CPU and any CUDA torch).
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


def available_backends() -> dict[str, str]:
    """Backend name -> its library version, or ``"unavailable: <reason>"``."""
    return {name: _probe(name)[1] for name in BACKENDS}


def resolve_backend(name: str) -> str:
    """The concrete backend for ``name`` (``auto`` picks the first available of ``AUTO_ORDER``)."""
    if name == "auto":
        for cand in AUTO_ORDER:
            if _probe(cand)[0]:
                return cand
        return "torch"
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose auto or one of {list(BACKENDS)}")
    ok, why = _probe(name)
    if not ok:
        raise RuntimeError(f"backend {name!r} is {why}")
    return name


def get_ops(name: str, device: str = "cpu") -> SparseOps:
    """A ``SparseOps`` for a concrete backend name (see ``resolve_backend``)."""
    name = resolve_backend(name)
    if name == "torch":
        from .backend_torch import TorchOps

        return TorchOps()
    if name == "minkowski":
        from .backend_minkowski import MinkowskiOps

        return MinkowskiOps(device)
    from .backend_spconv import SpconvOps

    return SpconvOps(device)
