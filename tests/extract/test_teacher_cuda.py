"""The 3D teacher on CUDA: the same weights give the same per-point features as the pure-PyTorch backend on the
CPU, and `auto` picks a backend that runs there. Run by `make gpu-check`; skipped without CUDA (see
conftest.CUDA_STANDIN)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stages.extract.synthetic import make_scene
from stages.extract.teacher import TeacherConfig, load_teacher
from stages.extract.teacher.backends import cuda_support, resolve_backend

pytestmark = pytest.mark.cuda
# the paper's teacher on a GPU; a smaller one of the same family where the CPU stands in (the dry run stays short)
ARCH = "Res16UNet34C" if torch.cuda.is_available() else "Res16UNet14A"


@pytest.fixture(scope="module")
def room() -> tuple[np.ndarray, np.ndarray]:
    """One synthetic room at 15 cm vertex spacing (~4k points): every layer of Res16UNet34C sees real geometry."""
    mesh = make_scene(0, 0, frames=1).mesh(vertex_spacing=0.15)
    return np.ascontiguousarray(mesh.vertices, np.float32), np.ascontiguousarray(mesh.colors, np.uint8)


@pytest.fixture(scope="module")
def cpu_features(room) -> np.ndarray:
    cfg = TeacherConfig(architecture=ARCH, backend="torch", device="cpu")
    return load_teacher(cfg, init="random", seed=0).point_features(*room)


@pytest.mark.parametrize("backend", ["torch", "spconv"])
def test_teacher_on_the_device_equals_the_cpu_features(room, cpu_features, cuda_device, backend):
    if backend == "spconv":
        if cuda_device.type != "cuda":
            pytest.skip("spconv on the CPU is compared with the torch backend in test_teacher_backends")
        pytest.importorskip("spconv.pytorch", reason="spconv is not installed (its CUDA wheels, ~100 MB with "
                            "cumm, are too large to carry to a lent GPU)")
        if not cuda_support("spconv")[0]:
            pytest.skip("the installed spconv is a CPU-only build")
    teacher = load_teacher(TeacherConfig(architecture=ARCH, backend=backend, device=str(cuda_device)), init="random",
                           seed=0)
    assert next(teacher.net.parameters()).device.type == cuda_device.type
    got = teacher.point_features(*room)
    scale = float(np.abs(cpu_features).max())
    assert got.shape == cpu_features.shape and scale > 1e-3
    # float32 on both sides, summed in other orders (cuBLAS vs MKL): a few ulps of the feature scale per layer
    err = float(np.abs(got - cpu_features).max())
    assert err <= 1e-4 * scale + 1e-6, f"{backend} on {cuda_device}: max |Δ| {err:.3g} (features up to {scale:.3g})"


def test_auto_backend_runs_on_the_device(room, cuda_device):
    name = resolve_backend("auto", str(cuda_device))
    teacher = load_teacher(TeacherConfig(architecture=ARCH, backend="auto", device=str(cuda_device)), init="random",
                           seed=0)
    assert teacher.info["backend"] == name
    features = teacher.point_features(room[0][:500], room[1][:500])
    assert features.shape == (500, teacher.channels) and np.isfinite(features).all()
    if cuda_device.type == "cuda":
        assert cuda_support(name)[0]
        assert torch.cuda.max_memory_allocated() > 0
