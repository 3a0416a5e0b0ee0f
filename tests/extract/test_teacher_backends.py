"""Each sparse backend against dense conv3d / conv_transpose3d, and all backends against the torch backend."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stages.extract.teacher import TeacherConfig, available_backends, get_ops, load_teacher
from stages.extract.teacher.sparse import kernel_offsets

ALL = ["torch", "minkowski", "spconv"]


def require(name: str) -> None:
    """torch always; MinkowskiEngine is mandatory when DISTILL_CACHE_REQUIRE_MINKOWSKI is set (CI builds it)."""
    if name == "minkowski":
        if os.environ.get("DISTILL_CACHE_REQUIRE_MINKOWSKI"):
            import MinkowskiEngine  # noqa: F401  (a missing build is a failure here)
        else:
            pytest.importorskip("MinkowskiEngine")
    elif name == "spconv":
        pytest.importorskip("spconv.pytorch", reason="spconv is optional (pip install spconv)")


def dense_weight(w: torch.Tensor, k: int) -> torch.Tensor:
    """Canonical (K, in, out), x-fastest -> conv3d's (out, in, kx, ky, kz)."""
    cin, cout = w.shape[-2:]
    return w.reshape(k, k, k, cin, cout).permute(4, 3, 2, 1, 0).contiguous()


def densify(coords: np.ndarray, feats: torch.Tensor, size: int, stride: int = 1) -> torch.Tensor:
    d = feats.new_zeros(1, feats.shape[1], size, size, size)
    c = torch.as_tensor(coords // stride)
    d[0, :, c[:, 0], c[:, 1], c[:, 2]] = feats.t()
    return d


def at(dense: torch.Tensor, coords: np.ndarray, stride: int) -> torch.Tensor:
    c = torch.as_tensor(coords // stride)
    return dense[0, :, c[:, 0], c[:, 1], c[:, 2]].t()


def random_grid(seed: int, size: int = 8, n: int = 160, cin: int = 4, dtype=torch.float64):
    rng = np.random.default_rng(seed)
    flat = rng.choice(size ** 3, size=n, replace=False)
    coords = np.stack(np.unravel_index(flat, (size,) * 3), axis=1).astype(np.int64)
    feats = torch.as_tensor(rng.normal(size=(n, cin)), dtype=dtype)
    return coords, feats


def dtype_for(name: str):
    return torch.float32 if name == "spconv" else torch.float64  # spconv's CPU kernels are float32/16 only


def test_kernel_offsets_are_x_fastest():
    off = kernel_offsets(3)
    assert off.shape == (27, 3)
    assert off[0].tolist() == [-1, -1, -1] and off[1].tolist() == [0, -1, -1] and off[3].tolist() == [-1, 0, -1]
    assert kernel_offsets(2)[:3].tolist() == [[0, 0, 0], [1, 0, 0], [0, 1, 0]]


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("kernel_size,stride", [(3, 1), (5, 1), (2, 2), (3, 2), (1, 1)])
def test_sparse_conv_matches_dense_conv3d(name, kernel_size, stride):
    require(name)
    dtype = dtype_for(name)
    ops = get_ops(name)
    coords, feats = random_grid(kernel_size * 10 + stride, dtype=dtype)
    cin, cout, size = feats.shape[1], 5, 8
    g = torch.Generator().manual_seed(1)
    w = torch.randn(kernel_size ** 3, cin, cout, generator=g).to(dtype)
    x = ops.from_voxels(torch.as_tensor(coords), feats)
    weight = w[0] if kernel_size == 1 else w  # canonical volume-1 stride-1 kernel is (in, out)
    if name == "spconv" and stride > 1 and kernel_size != stride:
        with pytest.raises(NotImplementedError, match="kernel == stride"):  # spconv's output set differs there
            ops.conv(x, weight, None, kernel_size, stride, 1)
        return
    y = ops.conv(x, weight, None, kernel_size, stride, 1)
    out_c = ops.coordinates(y).cpu().numpy()
    assert ops.tensor_stride(y) == stride
    expected_coords = np.unique(coords // stride * stride, axis=0)
    assert sorted(map(tuple, out_c)) == sorted(map(tuple, expected_coords))
    pad = (kernel_size - 1) // 2 if kernel_size % 2 else 0
    dense = F.conv3d(densify(coords, feats, size), dense_weight(w, kernel_size), stride=stride, padding=pad)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(ops.features(y).cpu(), at(dense, out_c, stride), atol=tol, rtol=tol)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("kernel_size", [2, 3])
def test_sparse_transposed_conv_matches_dense(name, kernel_size):
    require(name)
    dtype = dtype_for(name)
    ops = get_ops(name)
    coords, feats = random_grid(7 + kernel_size, dtype=dtype)
    cin, cout, size = feats.shape[1], 3, 8
    g = torch.Generator().manual_seed(2)
    x = ops.from_voxels(torch.as_tensor(coords), feats)
    down = ops.conv(x, torch.randn(8, cin, cin, generator=g).to(dtype), None, 2, 2, 1)  # coarse map at stride 2
    w = torch.randn(kernel_size ** 3, cin, cout, generator=g).to(dtype)
    if name == "spconv" and kernel_size != 2:
        with pytest.raises(NotImplementedError, match="kernel == stride"):
            ops.conv_transpose(down, w, None, kernel_size, 2)
        return
    y = ops.conv_transpose(down, w, None, kernel_size, 2)
    assert ops.tensor_stride(y) == 1
    fine_c = ops.coordinates(y).cpu().numpy()
    assert sorted(map(tuple, fine_c)) == sorted(map(tuple, coords))  # back onto the encoder's map
    coarse_c = ops.coordinates(down).cpu().numpy()
    pad = (kernel_size - 1) // 2 if kernel_size % 2 else 0
    # conv_transpose3d wants (in, out, kx, ky, kz)
    wd = dense_weight(w, kernel_size).transpose(0, 1)
    dense = F.conv_transpose3d(densify(coarse_c, ops.features(down).cpu(), size // 2, 2), wd, stride=2,
                               padding=pad, output_padding=1 if kernel_size % 2 else 0)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(ops.features(y).cpu(), at(dense, fine_c, 1), atol=tol, rtol=tol)


def synthetic_room(seed: int = 0, n: int = 6000) -> tuple[np.ndarray, np.ndarray]:
    """A floor, two walls and a box: a small scene with the sparsity pattern of real scans."""
    rng = np.random.default_rng(seed)
    k = n // 4
    floor = np.c_[rng.uniform(-1, 1.5, k), rng.uniform(-1, 1.5, k), np.zeros(k)]
    wall1 = np.c_[rng.uniform(-1, 1.5, k), np.full(k, -1.0), rng.uniform(0, 1.2, k)]
    wall2 = np.c_[np.full(k, -1.0), rng.uniform(-1, 1.5, k), rng.uniform(0, 1.2, k)]
    box = rng.uniform([0.2, 0.2, 0.0], [0.6, 0.7, 0.5], size=(n - 3 * k, 3))
    pts = np.concatenate([floor, wall1, wall2, box]).astype(np.float32)
    cols = np.clip(rng.normal(128, 60, size=(n, 3)) + 40 * (pts[:, 2:3] > 0.3), 0, 255).astype(np.uint8)
    return pts, cols


@pytest.mark.parametrize("name", ["minkowski", "spconv"])
def test_backends_agree_with_torch_on_a_scene(name):
    require(name)
    pts, cols = synthetic_room()
    ref = load_teacher(TeacherConfig(backend="torch"), init="random", seed=3).point_features(pts, cols)
    other = load_teacher(TeacherConfig(backend=name), init="random", seed=3)
    assert other.info["backend"] == name
    got = other.point_features(pts, cols)
    assert got.shape == ref.shape == (len(pts), 96)
    assert float(np.abs(ref).max()) > 1e-3  # the comparison is not between two zero arrays
    assert float(np.abs(got - ref).max()) <= 1e-4


def test_available_backends_lists_all_and_auto_resolves():
    av = available_backends()
    assert set(av) == set(ALL)
    assert not av["torch"].startswith("unavailable")
    t = load_teacher(TeacherConfig(backend="auto"), init="random", seed=0)
    assert t.info["backend"] in ALL and not av[t.info["backend"]].startswith("unavailable")
    with pytest.raises(ValueError, match="unknown backend"):
        get_ops("cuda-magic")


def test_auto_on_cuda_skips_builds_without_cuda_kernels(monkeypatch):
    """A CPU-only MinkowskiEngine (what `make install` builds where there is no CUDA) or PyPI's CPU-only spconv
    imports fine but cannot run on a GPU: on cuda, `auto` passes them over and naming them explicitly fails with
    the reason, while on the CPU nothing changes."""
    from stages.extract.teacher import backends

    monkeypatch.setattr(backends, "_probe", lambda name: (True, "1.0"))
    cpu_only = {"spconv": (False, "its build is CPU-only"), "minkowski": (False, "its build is CPU-only"),
                "torch": (True, "")}
    monkeypatch.setattr(backends, "cuda_support", lambda name: cpu_only[name])
    assert backends.resolve_backend("auto", "cpu") == "spconv"
    assert backends.resolve_backend("auto", "cuda") == "torch"
    assert backends.resolve_backend("auto", "cuda:1") == "torch"
    with pytest.raises(RuntimeError, match="unavailable on cuda: its build is CPU-only"):
        backends.resolve_backend("minkowski", "cuda")
    cpu_only["minkowski"] = (True, "")  # a CUDA build of MinkowskiEngine
    assert backends.resolve_backend("auto", "cuda") == "minkowski"


def test_cuda_support_reads_the_installed_builds():
    from stages.extract.teacher.backends import cuda_support

    assert cuda_support("torch") == (True, "")
    for name, module in (("minkowski", "MinkowskiEngine"), ("spconv", "spconv.pytorch")):
        try:
            __import__(module)
        except Exception:
            continue
        ok, why = cuda_support(name)
        assert isinstance(ok, bool) and (ok or "CPU-only" in why or "cannot tell" in why), (name, ok, why)
