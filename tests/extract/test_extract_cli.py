"""Stage one end to end through the CLI on a tiny synthetic ScanNet-format world."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cache_schema import open_cache
from pipeline.cli import main

EXTRACT = ["--dataset", "scannet", "--teacher-init", "random", "--seed", "3", "--backend", "torch", "--quiet"]
# One torch thread in every extracting process, as dask gives its workers: on the CPU the BLAS's float rounding
# depends on the thread count (MKL splits some products' inner dimension over threads), so caches are equal byte for
# byte only between runs with the same threads per process.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("world")
    r = CliRunner().invoke(main, ["synth", "scannet", str(root), "--scenes", "3", "--frames", "5", "--seed", "1",
                                  "--size", "80x60", "--vertex-spacing", "0.1"])
    assert r.exit_code == 0, r.output
    return root


def _checksums(path: Path) -> dict[str, dict]:
    cache = open_cache(path)
    return {s: cache.scene(s).attrs["checksums"] for s in cache.complete_scenes()}


def _extract(world: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pipeline.cli", "extract", "--root", str(world), "--out", str(out), *EXTRACT, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ENV)


@pytest.fixture(scope="module")
def reference_cache(world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "cache"
    r = _extract(world, out)
    assert r.returncode == 0, r.stderr + r.stdout
    return out


def test_extract_writes_a_complete_cache(reference_cache):
    r = CliRunner().invoke(main, ["inspect", str(reference_cache), "--json"])
    s = json.loads(r.output)
    assert s["scenes_complete"] == 3 and s["scenes_incomplete"] == 0 and s["frames"] == 15
    assert s["channels"] == 96 and 0.05 < s["coverage"] <= 1.0
    assert s["teacher"]["checkpoint_sha256"] == "random:3" and s["stats"]["count"] > 0
    assert s["projection"]["dilation"] == 1  # the paper's 3x3 dilation is the default
    cache = open_cache(reference_cache)
    f = cache.scene(cache.complete_scenes()[0]).read_frame(2)
    assert f.image_size == (60, 80) and f.features.shape[1] == 96


def test_rerun_skips_complete_scenes_and_other_parameters_are_refused(world, reference_cache):
    r = _extract(world, reference_cache)
    assert r.returncode == 0 and "3 of 3 scenes already complete" in (r.stdout + r.stderr)
    r = _extract(world, reference_cache, "--stride", "4")
    assert r.returncode != 0 and "projection.stride" in r.stderr


def test_sigkill_then_rerun_equals_uninterrupted(world, reference_cache, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "pipeline.cli", "extract", "--root", str(world), "--out", str(out), *EXTRACT]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=ENV)
    deadline = time.time() + 300
    # kill as soon as the first scene is complete: the second one is then half written
    while time.time() < deadline and proc.poll() is None:
        marks = list(out.glob("scenes/*/zarr.json"))
        if any('"complete": true' in m.read_text() for m in marks):
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = open_cache(out)
    assert len(partial.complete_scenes()) < 3
    r = _extract(world, out)
    assert r.returncode == 0, r.stderr
    assert _checksums(out) == _checksums(reference_cache)
    assert open_cache(out).manifest.stats == open_cache(reference_cache).manifest.stats


def test_concurrent_extraction_is_refused(world, tmp_path):
    out = tmp_path / "locked"
    out.mkdir()
    (out / ".extract.lock").write_text(f"{os.uname().nodename} {os.getpid()}")  # a live process holds it
    r = _extract(world, out)
    assert r.returncode != 0 and "being written by another extraction" in r.stderr


def test_dask_workers_give_the_same_cache(world, reference_cache, tmp_path):
    out = tmp_path / "dask"
    r = _extract(world, out, "--workers", "2")
    assert r.returncode == 0, r.stderr
    assert "dashboard" in r.stdout + r.stderr
    assert _checksums(out) == _checksums(reference_cache)
    ref, got = open_cache(reference_cache).manifest.stats, open_cache(out).manifest.stats
    assert got.count == ref.count
    assert max(abs(a - b) for a, b in zip(got.mean, ref.mean, strict=True)) < 1e-12


def test_uint8_feature_dtype_end_to_end(world, reference_cache, tmp_path):
    """`--feature-dtype uint8`: another fingerprint, `inspect` names the encoding, the cache verifies, features
    read back within half a quantization step of the float16 cache's, and the moments are the float16 cache's."""
    out, scene = tmp_path / "c8", "scene0002_00"
    r = _extract(world, out, "--feature-dtype", "uint8", "--scenes", scene)
    assert r.returncode == 0, r.stderr
    runner = CliRunner()
    s = json.loads(runner.invoke(main, ["inspect", str(out), "--json"]).output)
    assert s["encoding"]["features"] == "uint8"
    assert "features uint8 (lossy" in runner.invoke(main, ["inspect", str(out)]).output
    assert "features float16" in runner.invoke(main, ["inspect", str(reference_cache)]).output
    v = runner.invoke(main, ["verify", str(out)])
    assert v.exit_code == 0, v.output
    ref, got = open_cache(reference_cache), open_cache(out)
    assert got.manifest.params_fingerprint() != ref.manifest.params_fingerprint()
    a, b = ref.scene(scene), got.scene(scene)
    assert b.attrs["moments"] == a.attrs["moments"]  # of the unquantized features
    fa, fb = a.read_block(0, a.num_frames), b.read_block(0, b.num_frames)
    np.testing.assert_array_equal(fa.cells, fb.cells)
    assert fb.features.dtype == np.float16
    assert (np.abs(fa.features.astype(np.float64) - fb.features) <= b.quantizer.error_bound()).all()
    assert np.dtype(b.arrays["features"].dtype) == np.uint8
    assert b.arrays["features"].nbytes_stored() < a.arrays["features"].nbytes_stored()


def test_label_embedding_teacher_end_to_end(world, reference_cache, tmp_path):
    """`--teacher label-embedding`: no checkpoint, no network; the cache has the network cache's cells and points,
    each feature is E[the point's class] (same class, same feature), the manifest names the control, `inspect` shows
    it, the cache verifies, and its fingerprint differs from the network teacher's."""
    from cache_schema import SCANNET20
    from stages.extract.label_embedding import LabelEmbeddingTeacher

    out, scene = tmp_path / "le", "scene0001_00"
    runner = CliRunner()
    r = runner.invoke(main, ["extract", "--dataset", "scannet", "--root", str(world), "--out", str(out), "--quiet",
                             "--teacher", "label-embedding", "--embedding-seed", "4", "--scenes", scene])
    assert r.exit_code == 0, r.output
    s = json.loads(runner.invoke(main, ["inspect", str(out), "--json"]).output)
    t = s["teacher"]
    assert t["architecture"] == "label-embedding" and t["checkpoint_sha256"] == "label-embedding:4"
    assert s["channels"] == 96 and s["stats"]["count"] > 0
    assert "label-embedding control (96 ch, seed 4)" in runner.invoke(main, ["inspect", str(out)]).output
    assert runner.invoke(main, ["verify", str(out)]).exit_code == 0
    got, ref = open_cache(out), open_cache(reference_cache)
    assert got.manifest.params_fingerprint() != ref.manifest.params_fingerprint()
    a, b = got.scene(scene), ref.scene(scene)
    fa, fb = a.read_block(0, a.num_frames), b.read_block(0, b.num_frames)
    np.testing.assert_array_equal(fa.cells, fb.cells)
    np.testing.assert_array_equal(fa.point_index, fb.point_index)
    e = LabelEmbeddingTeacher(SCANNET20, channels=96, seed=4)
    np.testing.assert_array_equal(fa.features, e.label_features(fa.point_labels).astype(np.float16))
    for label in np.unique(fa.point_labels):  # two points of one class: one feature
        assert len(np.unique(fa.features[fa.point_labels == label], axis=0)) == 1


@pytest.mark.parametrize(("args", "message"), [
    ([], "give --teacher-checkpoint PATH"),
    (["--teacher", "label-embedding", "--teacher-init", "random"], "takes no --teacher-init"),
    (["--teacher", "label-embedding", "--teacher-checkpoint", "{ckpt}"], "takes no --teacher-checkpoint"),
    (["--teacher", "label-embedding", "--layer", "block6"], "takes no --layer"),
    (["--embedding-seed", "2", "--teacher-init", "random"], "only --teacher label-embedding takes --embedding-seed"),
    (["--teacher", "label-embedding", "--embedding-channels", "0"], "--embedding-channels"),
])
def test_teacher_options_are_checked(world, tmp_path, args, message):
    (tmp_path / "t.pth").write_bytes(b"")
    args = [a.replace("{ckpt}", str(tmp_path / "t.pth")) for a in args]
    r = CliRunner().invoke(main, ["extract", "--dataset", "scannet", "--root", str(world), "--out",
                                  str(tmp_path / "c"), "--quiet", *args])
    assert r.exit_code == 2 and message in r.output and not (tmp_path / "c").exists()


def test_scheduler_with_gpu_resource_workers_gives_the_same_cache(world, reference_cache, tmp_path):
    """`--scheduler` against workers started the way the README's multi-node recipe starts them (one thread each,
    advertising GPU=1): the scene written equals the serial run's, byte for byte."""
    from distributed import LocalCluster

    out, scene = tmp_path / "sched", "scene0001_00"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, resources={"GPU": 1},
                      dashboard_address=":0", silence_logs=40, local_directory=str(tmp_path)) as cluster:
        r = _extract(world, out, "--scheduler", cluster.scheduler_address, "--scenes", scene)
    assert r.returncode == 0, r.stderr
    assert "dask: 2 workers" in r.stdout + r.stderr
    assert _checksums(out) == {scene: _checksums(reference_cache)[scene]}
