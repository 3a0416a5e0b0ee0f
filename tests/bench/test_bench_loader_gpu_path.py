"""`bench_loader --device cuda`'s two measurements, driven on the CPU: the device-mode loader's batches/s and the
trainer's data-wait fraction read from its log. Only the CUDA synchronisation is left for a GPU machine."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `bench` is importable from the repository root only
    sys.path.insert(0, str(REPO))
bench_loader = importlib.import_module("bench.bench_loader")
bench_run = importlib.import_module("bench.run")
common = importlib.import_module("bench.common")


@pytest.fixture(scope="module")
def bench_cache(tmp_path_factory):
    return common.build_bench_cache(tmp_path_factory.mktemp("bench") / "cache", 6, frames_per_scene=3)


def test_device_path_rate_and_trainer_wait_on_cpu(bench_cache):
    from stages.train.loader import LoaderConfig

    cfg = LoaderConfig(batch_size=2, workers=1, augment_on="device", crop=65)
    gpu = bench_loader.gpu_rate(bench_cache, cfg, runs=1, device="cpu")
    assert gpu["gpu_mode"] == "device" and gpu["gpu_nvjpeg"] is False
    assert gpu["gpu_batches_per_s"] > 0
    assert gpu["gpu_frames_per_s"] == pytest.approx(2 * gpu["gpu_batches_per_s"], rel=0.02)  # 6 frames, batch 2

    wait = bench_loader.trainer_wait(bench_cache, "cpu", depth=18, iters=2, workers=1, batch_size=2, crop=65)
    assert wait["train_iters"] == 2 and 0.0 <= wait["data_wait_frac"] <= 1.0
    assert wait["step_time_s"] > 0 and wait["frames_per_s_training"] > 0

    assert (wait["train_batch"], wait["train_crop"], wait["train_depth"]) == (2, 65, 18)

    # the loader row's note carries the delivery rate, and the data wait gets its own row against the 5 % target
    result = {"frames": 6, "key": "train", "mode": "train", "batch_size": 2, "workers": 1, "cores": 2,
              "mean_jpeg_kb": 50.0, "loader_fps_per_core": 100.0, "decode_fps_per_core": 400.0, "ratio": 0.25,
              "device": "cuda", **gpu, **wait}
    r, w = bench_run.rows_loader([result])
    assert "gpu_batches_per_s" in r["note"] and "data_wait_frac" not in r["note"]
    assert w["measure"].startswith("Trainer data wait (paired, PSPNet-18, batch 2, crop 65")
    assert w["target"] == "< 5 %" and w["status"] == ("met" if wait["data_wait_frac"] < 0.05 else "**missed**")
    (met,) = bench_run.rows_loader([result | {"data_wait_frac": 0.01}])[1:]
    (missed,) = bench_run.rows_loader([result | {"data_wait_frac": 0.2}])[1:]
    assert (met["status"], missed["status"]) == ("met", "**missed**") and missed["value"] == "20 % of the step"
