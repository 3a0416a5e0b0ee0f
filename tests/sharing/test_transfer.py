"""pull / merge: byte-exact, verified, resumable copies; merges refuse what must not be merged."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_manifest, random_frame

from cache_schema import CacheWriter, FingerprintMismatchError, open_cache
from cache_schema.transfer import TransferError, chunk_keys, merge_caches, pull_cache
from cache_schema.verify import verify_cache
from pipeline.cli import main


class Killed(RuntimeError):
    """Stands for a kill -9 in the middle of a transfer."""


def frames_equal(a: Path, b: Path, scene: str) -> None:
    x, y = open_cache(a).scene(scene), open_cache(b).scene(scene)
    bx, by = x.read_block(0, x.num_frames), y.read_block(0, y.num_frames)
    for k in ("frame_id", "pose", "image_data", "labels", "cells", "features", "point_index", "depth"):
        np.testing.assert_array_equal(getattr(bx, k), getattr(by, k), err_msg=k)


def build_with_inputs(root: Path, names: list[str], all_names: list[str], seed: int = 0) -> Path:
    """A cache as extraction writes it: scenes record their input fingerprint, the manifest hashes them."""
    h = hashlib.sha256()
    for n in sorted(names):
        h.update(f"{n}:files-{n}\n".encode())
    m = make_manifest(names)
    m = replace(m, dataset=replace(m.dataset, input_fingerprint=h.hexdigest()))
    w = CacheWriter.create(root, m)
    rng = np.random.default_rng(seed)
    for n in names:
        sw = w.begin_scene(n, height=48, width=64)
        for i in range(3):
            sw.add(random_frame(rng, i, 48, 64, 8, 8))
        sw.commit({"input_fingerprint": f"files-{n}"})
    w.finalize_stats()
    return root


def test_full_pull_is_byte_exact_and_keeps_the_fingerprint(make_cache, tmp_path):
    src = make_cache(scenes=2, frames=5)
    report = pull_cache(src, tmp_path / "dst")
    assert report.copied == ["scene0000_00", "scene0001_00"] and report.complete
    a, b = open_cache(src), open_cache(tmp_path / "dst")
    assert a.fingerprint == b.fingerprint
    np.testing.assert_array_equal(a.global_stats()[0], b.global_stats()[0])
    for s in a.complete_scenes():
        frames_equal(src, tmp_path / "dst", s)
        for f in (src / "scenes" / s / "features").rglob("*"):
            if f.is_file():
                assert (tmp_path / "dst" / f.relative_to(src)).read_bytes() == f.read_bytes()
    assert verify_cache(tmp_path / "dst").ok
    again = pull_cache(src, tmp_path / "dst")
    assert again.copied == [] and again.skipped == ["scene0000_00", "scene0001_00"]


def test_subset_pull_has_its_own_manifest_and_statistics(make_cache, tmp_path):
    src = make_cache(scenes=3, frames=4)
    pull_cache(src, tmp_path / "sub", scenes=["scene0002_00", "scene0000_00"])
    sub, full = open_cache(tmp_path / "sub"), open_cache(src)
    assert sub.manifest.dataset.scenes == ["scene0000_00", "scene0002_00"]
    assert sub.fingerprint != full.fingerprint
    assert sub.manifest.params_fingerprint() == full.manifest.params_fingerprint()
    feats = np.concatenate([sub.scene(s).read_block(0, 4).features.astype(np.float64) for s in sub.complete_scenes()])
    mean, var = sub.global_stats()
    np.testing.assert_allclose(mean, feats.mean(0), rtol=1e-10)
    np.testing.assert_allclose(var, feats.var(0), rtol=1e-10)
    assert verify_cache(tmp_path / "sub").ok
    with pytest.raises(TransferError, match="no scene"):
        pull_cache(src, tmp_path / "sub2", scenes=["scene0009_00"])
    with pytest.raises(FingerprintMismatchError):  # dst holds another cache (another scene list)
        pull_cache(src, tmp_path / "sub", scenes=["scene0001_00"])


def test_interrupted_pull_resumes(make_cache, tmp_path):
    src = make_cache(scenes=3, frames=4)
    dst = tmp_path / "dst"

    def kill_after_first_scene(name: str, action: str) -> None:
        raise Killed(name)

    with pytest.raises(Killed):
        pull_cache(src, dst, on_scene=kill_after_first_scene)
    # Killed in the middle of the second scene: its group exists but has no completion marker.
    calls = []

    def kill_mid_scene(n: int) -> None:
        calls.append(n)
        if len(calls) == 3:
            raise Killed("mid-scene")

    with pytest.raises(Killed):
        pull_cache(src, dst, on_bytes=kill_mid_scene)
    half = open_cache(dst)
    assert half.scene_status("scene0000_00") == "complete"
    assert half.scene_status("scene0001_00") == "incomplete"
    report = verify_cache(dst, quick=True)
    assert {(p.scene, p.kind) for p in report.problems} >= {("scene0001_00", "incomplete_scene")}

    resumed = pull_cache(src, dst)
    assert resumed.skipped == ["scene0000_00"] and resumed.copied == ["scene0001_00", "scene0002_00"]
    assert verify_cache(dst).ok
    for s in ("scene0000_00", "scene0001_00", "scene0002_00"):
        frames_equal(src, dst, s)


def test_damaged_destination_scene_is_copied_again(make_cache, tmp_path):
    src = make_cache(scenes=2, frames=4)
    dst = tmp_path / "dst"
    pull_cache(src, dst)
    chunk = dst / "scenes" / "scene0001_00" / "image_data" / "c" / "0"
    data = bytearray(chunk.read_bytes())
    data[500] ^= 1
    chunk.write_bytes(bytes(data))
    report = pull_cache(src, dst)
    assert report.recopied == ["scene0001_00"] and report.skipped == ["scene0000_00"]
    assert verify_cache(dst).ok


def test_corrupt_source_scene_is_named_and_left_incomplete(make_cache, tmp_path):
    src = make_cache(scenes=2, frames=4)
    chunk = src / "scenes" / "scene0001_00" / "pose" / "c" / "0" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[9] ^= 0x40
    chunk.write_bytes(bytes(data))
    with pytest.raises(TransferError, match=r"scene scene0001_00.*does not verify.*checksum.*pose"):
        pull_cache(src, tmp_path / "dst")
    dst = open_cache(tmp_path / "dst")
    assert dst.scene_status("scene0000_00") == "complete"
    assert dst.scene_status("scene0001_00") == "incomplete"


def test_pull_from_source_with_unfinished_scene(make_cache, tmp_path):
    src = make_cache(scenes=2, frames=3, leave_incomplete=("scene0001_00",))
    report = pull_cache(src, tmp_path / "dst")
    assert report.copied == ["scene0000_00"] and report.unavailable == ["scene0001_00"] and not report.complete
    result = CliRunner().invoke(main, ["pull", str(src), str(tmp_path / "dst2")])
    assert result.exit_code == 1 and "scene0001_00" in result.output


def test_merge_of_two_halves_equals_the_whole(tmp_path):
    names = ["scene0000_00", "scene0001_00", "scene0002_00"]
    whole = build_with_inputs(tmp_path / "whole", names, names)
    pull_cache(whole, tmp_path / "a", scenes=names[:1])
    pull_cache(whole, tmp_path / "b", scenes=names[1:])
    report = merge_caches([tmp_path / "a", tmp_path / "b"], tmp_path / "m")
    assert report.copied == names
    merged, ref = open_cache(tmp_path / "m"), open_cache(whole)
    # The scenes record their input fingerprints, so the merge has the fingerprint an extraction of all would have.
    assert merged.fingerprint == ref.fingerprint
    np.testing.assert_allclose(merged.global_stats()[1], ref.global_stats()[1], rtol=1e-12)
    assert merged.manifest.stats.count == ref.manifest.stats.count
    assert verify_cache(tmp_path / "m").ok
    for s in names:
        frames_equal(whole, tmp_path / "m", s)


def test_merge_refuses_different_parameters_and_overlaps(make_cache, tmp_path):
    a = make_cache("a", scenes=2, frames=2)
    other = make_manifest(["scene0100_00"])
    other = replace(other, projection=replace(other.projection, stride=4))
    w = CacheWriter.create(tmp_path / "b", other)
    sw = w.begin_scene("scene0100_00", height=48, width=64)
    sw.add(random_frame(np.random.default_rng(0), 0, 48, 64, 8, 4))
    sw.commit()
    w.finalize_stats()
    with pytest.raises(TransferError, match=r"projection\.stride: 8 != 4"):
        merge_caches([a, tmp_path / "b"], tmp_path / "m")
    c = make_cache("c", scenes=3, frames=2, seed=3)
    with pytest.raises(TransferError, match=r"overlapping scenes: scene0000_00 .*scene0001_00"):
        merge_caches([a, c], tmp_path / "m2")
    assert not (tmp_path / "m").exists() and not (tmp_path / "m2").exists()


def test_merge_cli(make_cache, tmp_path):
    src = make_cache(scenes=4, frames=2)
    runner = CliRunner()
    for name, scenes in (("a", "scene0000_00,scene0001_00"), ("b", "scene0002_00,scene0003_00")):
        r = runner.invoke(main, ["pull", str(src), str(tmp_path / name), "--scenes", scenes])
        assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    assert open_cache(tmp_path / "m").complete_scenes() == [f"scene000{i}_00" for i in range(4)]
    r = runner.invoke(main, ["merge", str(tmp_path / "a"), str(tmp_path / "a"), "--out", str(tmp_path / "x")])
    assert r.exit_code == 1 and "overlapping" in r.output


def test_chunk_keys_from_metadata(make_cache):
    path = make_cache(scenes=1, frames=9)
    meta = json.loads((path / "scenes" / "scene0000_00" / "labels" / "zarr.json").read_text())
    assert chunk_keys(meta, "labels") == ["c/0/0/0", "c/1/0/0", "c/2/0/0"]  # 9 frames, 4 per chunk
    with pytest.raises(TransferError, match="malformed"):
        chunk_keys({**meta, "shape": "x"}, "labels")


def test_uint8_cache_pulls_exactly_and_does_not_merge_with_float16(make_cache, tmp_path):
    src = make_cache("u8", scenes=2, frames=4, features="uint8")
    report = pull_cache(src, tmp_path / "dst")
    assert report.complete and report.copied == ["scene0000_00", "scene0001_00"]
    assert open_cache(tmp_path / "dst").fingerprint == open_cache(src).fingerprint
    for s in ("scene0000_00", "scene0001_00"):
        frames_equal(src, tmp_path / "dst", s)  # dequantized with the copied scale/offset
    assert verify_cache(tmp_path / "dst").ok
    f16 = make_cache("f16", scenes=3, frames=2, seed=3)
    pull_cache(f16, tmp_path / "other", scenes=["scene0002_00"])
    with pytest.raises(TransferError, match=r"encoding\.features: 'uint8' != 'float16'"):
        merge_caches([src, tmp_path / "other"], tmp_path / "m")
