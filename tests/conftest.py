"""Shared fixtures: small synthetic caches built through the real writer."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from cache_schema import (
    SCANNET20,
    CachedFrame,
    CacheWriter,
    DatasetInfo,
    ImageEncoding,
    Manifest,
    ProjectionParams,
    TeacherInfo,
)
from cache_schema.image_codec import encode_image
from cache_schema.layout import grid_shape

_REPO = Path(__file__).resolve().parents[1]
# The real label tables and splits (tests may read them; the package never does): the project's shared/data, inside
# the checkout or beside it (where CI puts it), else the developers' machines' copy.
SHARED_DATA = next((p for p in (_REPO / "shared" / "data", _REPO.parent / "shared" / "data", Path("/work/shared/data"))
                    if (p / "SHA256SUMS").is_file()), _REPO / "shared" / "data")


def random_frame(rng: np.random.Generator, frame_id: int, h: int, w: int, c: int, stride: int,
                 coverage: float = 0.3, fmt: str = "jpeg") -> CachedFrame:
    gh, gw = grid_shape(h, w, stride)
    n = int(coverage * gh * gw) if c else 0  # 2D-only caches (no teacher) have no covered cells
    cells = np.sort(rng.choice(gh * gw, size=n, replace=False)).astype(np.int32)
    image = (rng.random((h, w, 3)) * 255).astype(np.uint8)
    pose = np.eye(4)
    pose[:3, 3] = rng.normal(size=3)
    return CachedFrame(
        frame_id=frame_id, image=encode_image(image, fmt), image_size=(h, w),
        labels=rng.choice(np.array(SCANNET20.ids + (0,), np.uint8), size=(h, w)),
        intrinsics=np.array([[w, 0, w / 2], [0, w, h / 2], [0, 0, 1]], np.float64), pose=pose, cells=cells,
        features=rng.normal(1.0, 2.0, size=(n, c)).astype(np.float16),
        point_index=rng.integers(0, 10_000, n).astype(np.int32),
        point_labels=rng.choice(np.array(SCANNET20.ids, np.uint8), size=n),
        depth=rng.uniform(0.5, 5, n).astype(np.float16))


def make_manifest(scenes: list[str], channels: int = 8, stride: int = 8, fmt: str = "jpeg",
                  features: str = "float16") -> Manifest:
    return Manifest(
        dataset=DatasetInfo(name="scannet", label_space=SCANNET20.to_json(), scenes=sorted(scenes),
                            split="explicit", input_fingerprint="test-inputs"),
        # dilation 0 as before the default became 1: tests pin fingerprints of manifests built here
        projection=ProjectionParams(stride=stride, dilation=0),
        encoding=ImageEncoding(format=fmt, features=features),
        teacher=TeacherInfo(architecture="Res16UNet34C", backend="torch", checkpoint_sha256="random:0",
                            voxel_size=0.02, feature_layer="block8", channels=channels) if channels else None,
        producer={"name": "distill-cache", "version": "test"})


@pytest.fixture
def make_cache(tmp_path: Path) -> Callable[..., Path]:
    """Factory: a cache of random frames written through CacheWriter, finalized with global statistics."""

    def build(name: str = "cache", scenes: int = 2, frames: int = 5, h: int = 48, w: int = 64, channels: int = 8,
              seed: int = 0, leave_incomplete: tuple[str, ...] = (), fmt: str = "jpeg",
              features: str = "float16") -> Path:
        """`features="uint8"` stores each scene's features as the 8-bit code of their range over the scene."""
        rng = np.random.default_rng(seed)
        names = [f"scene{i:04d}_00" for i in range(scenes)]
        out = tmp_path / name
        writer = CacheWriter.create(out, make_manifest(names, channels, fmt=fmt, features=features))
        for s in names:
            made = [random_frame(rng, i * 10, h, w, channels, 8, fmt=fmt) for i in range(frames)]
            feats = np.concatenate([f.features for f in made])
            span = (feats.min(0), feats.max(0)) if feats.shape[0] else (np.zeros(channels), np.zeros(channels))
            sw = writer.begin_scene(s, height=h, width=w, feature_range=span if features == "uint8" else None)
            for f in made:
                sw.add(f)
            if s not in leave_incomplete:
                sw.commit()
        writer.finalize_stats()
        return out

    return build


@pytest.fixture
def one_thread():
    """One torch thread: a small ResNet step is faster on one thread than two on a loaded 2-core machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def make_student_checkpoint(make_cache, tmp_path: Path) -> Callable[..., tuple[Path, Path]]:
    """Factory: a tiny student checkpoint (configs/tiny.yaml, iteration 0: enough for inference mechanics) of
    `mode`, and the cache it was made from. `random_stats` replaces the running statistics of every BatchNorm and
    DimensionNorm (and DN2's tracked target) by random ones, so that a test sees whether eval-mode normalization
    is really used."""

    def build(mode: str = "paired", name: str = "run", cache: Path | None = None,
              random_stats: bool = False) -> tuple[Path, Path]:
        import torch

        from stages.train.checkpoint import load_checkpoint, save_checkpoint
        from stages.train.config import CONFIG_DIR, apply_overrides, load_config
        from stages.train.trainer import Trainer

        cache = cache or make_cache(f"cache-{name}", scenes=2, frames=3, h=96, w=128, channels=8)
        cfg = apply_overrides(load_config(CONFIG_DIR / "tiny.yaml"), {"log.progress": False, "mode": mode})
        trainer = Trainer(cfg, cache, tmp_path / name)
        path = trainer.save()
        trainer.close()
        if random_stats:
            ckpt = load_checkpoint(path)
            gen = torch.Generator().manual_seed(len(name))
            for key, value in ckpt.model.items():
                if key.endswith(("running_mean", "dn2.target_mean")):
                    value.copy_(torch.randn(value.shape, generator=gen) * 0.2)
                elif key.endswith(("running_var", "dn2.target_var")):
                    value.copy_(torch.rand(value.shape, generator=gen) + 0.5)
            save_checkpoint(path, ckpt)
        return path, cache

    return build


# ---- CUDA-marked tests ------------------------------------------------------------------------------------------
# `@pytest.mark.cuda` tests compare a CUDA path with its CPU counterpart. Without CUDA they skip, unless this
# variable is "cpu": then they run with the CPU as a stand-in device (what `make gpu-check --dry-run` does, so the
# tests themselves are exercised on every `make test`); tests of kernels that exist only on CUDA call
# `require_real_cuda()` and still skip.
CUDA_STANDIN = "DISTILL_CACHE_CUDA_STANDIN"


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("cuda") is None or _cuda() or os.environ.get(CUDA_STANDIN) == "cpu":
        return
    pytest.skip(f"needs CUDA (torch.cuda.is_available() is False); `make gpu-check` runs it on a GPU, and "
                f"{CUDA_STANDIN}=cpu runs it here with the CPU standing in")


def require_real_cuda(what: str) -> None:
    if not _cuda():
        pytest.skip(f"{what} exists only on CUDA: the CPU stand-in cannot run it")


@pytest.fixture
def cuda_device():
    """The device under test in `cuda`-marked tests: CUDA, or the CPU standing in for it (see CUDA_STANDIN)."""
    import torch

    return torch.device("cuda", torch.cuda.current_device()) if _cuda() else torch.device("cpu")
