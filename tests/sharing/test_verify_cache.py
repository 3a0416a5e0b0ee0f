"""verify_cache / `distill-cache verify`: every kind of damage is found and named by scene and frame."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from cache_schema import open_cache
from cache_schema.verify import verify_cache
from pipeline.cli import main

S0, S1 = "scene0000_00", "scene0001_00"


def kinds(report) -> set[tuple[str | None, str]]:
    return {(p.scene, p.kind) for p in report.problems}


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_clean_cache_verifies_and_verify_never_writes(make_cache):
    path = make_cache(scenes=2, frames=6)
    before = snapshot(path)
    report = verify_cache(path)
    assert report.ok, report.problems
    assert report.scenes_checked == 2 and report.frames_checked == 12
    quick = verify_cache(path, quick=True)
    assert quick.ok and quick.quick
    assert snapshot(path) == before  # opening and verifying wrote nothing


def test_truncated_chunk_is_named_by_scene_array_and_frames(make_cache):
    path = make_cache(scenes=2, frames=6)
    chunk = path / "scenes" / S1 / "labels" / "c" / "1" / "0" / "0"  # labels chunk 1 = frames 4..5
    chunk.write_bytes(chunk.read_bytes()[:20])
    report = verify_cache(path)
    [p] = report.problems
    assert (p.scene, p.kind, p.frame) == (S1, "unreadable", 4)
    assert "labels" in p.message and "frames 4..5" in p.message


def test_flipped_byte_in_uncompressed_images_fails_the_checksum(make_cache):
    path = make_cache(scenes=2, frames=4)
    chunk = path / "scenes" / S0 / "image_data" / "c" / "0"
    data = bytearray(chunk.read_bytes())
    data[1000] ^= 0x10  # inside the first JPEG (the chunk is padded to 1 MiB past the data)
    chunk.write_bytes(bytes(data))
    report = verify_cache(path)
    assert kinds(report) == {(S0, "checksum")}
    assert "image_data" in report.problems[0].message
    assert verify_cache(path, quick=True).ok  # quick mode does not read the data


def test_missing_scene_and_incomplete_scene(make_cache):
    path = make_cache(scenes=3, frames=3, leave_incomplete=("scene0002_00",))
    shutil.rmtree(path / "scenes" / S1)
    report = verify_cache(path, quick=True)
    assert (S1, "missing_scene") in kinds(report)
    assert ("scene0002_00", "incomplete_scene") in kinds(report)
    assert (None, "global_stats") in kinds(report)  # root stats still include the deleted scene


def test_nonfinite_features_named_by_frame(make_cache):
    path = make_cache(scenes=1, frames=5)
    group = zarr.open_group(str(path / "scenes" / S0), mode="r+")
    offsets = group["cell_offsets"][:]
    feats = group["features"]
    row = int(offsets[3]) + 1  # a cell of frame 3
    feats[row, 2] = np.float16("nan")
    report = verify_cache(path)
    bad = [p for p in report.problems if p.kind == "nonfinite"]
    assert [(p.scene, p.frame) for p in bad] == [(S0, 3)]
    assert (S0, "checksum") in kinds(report)


def test_cells_out_of_grid_and_not_increasing(make_cache):
    path = make_cache(scenes=1, frames=5)
    group = zarr.open_group(str(path / "scenes" / S0), mode="r+")
    off = group["cell_offsets"][:]
    cells = group["cells"][:]
    cells[off[1]] = 10_000  # frame 1: outside the 6x8 grid
    a = int(off[4])
    cells[a], cells[a + 1] = cells[a + 1], cells[a]  # frame 4: not increasing
    group["cells"][:] = cells
    report = verify_cache(path)
    cell_probs = sorted((p.frame, p.message) for p in report.problems if p.kind == "cells")
    assert [f for f, _ in cell_probs] == [1, 1, 4] or [f for f, _ in cell_probs] == [1, 4]
    assert any("grid" in m for f, m in cell_probs if f == 1)
    assert any("increasing" in m for f, m in cell_probs if f == 4)


def test_offsets_decreasing_are_reported(make_cache):
    path = make_cache(scenes=1, frames=5)
    group = zarr.open_group(str(path / "scenes" / S0), mode="r+")
    off = group["image_offsets"][:]
    off[2] = off[3] + 1
    group["image_offsets"][:] = off
    report = verify_cache(path, quick=True)
    assert any(p.kind == "offsets" and p.frame == 2 for p in report.problems), report.problems


def test_tampered_scene_moments_and_global_stats(make_cache):
    path = make_cache(scenes=2, frames=4)
    group = zarr.open_group(str(path / "scenes" / S0), mode="r+")
    attrs = dict(group.attrs)
    attrs["moments"]["mean"][0] += 0.5
    group.attrs.put(attrs)
    report = verify_cache(path)
    assert (S0, "scene_stats") in kinds(report)
    assert (None, "global_stats") in kinds(report)  # root stats no longer equal the merge of the moments


def test_schema_version_and_malformed_manifest(make_cache):
    path = make_cache(scenes=1, frames=2)
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["schema_version"] = 99
    (path / "zarr.json").write_text(json.dumps(meta))
    assert kinds(verify_cache(path)) == {(None, "schema_version")}
    meta["attributes"]["schema_version"] = 1
    meta["attributes"]["dataset"] = "not an object"
    (path / "zarr.json").write_text(json.dumps(meta))
    report = verify_cache(path)
    assert kinds(report) == {(None, "manifest")} and "malformed" in report.problems[0].message


def test_unsafe_scene_name_in_manifest_is_refused(make_cache):
    path = make_cache(scenes=1, frames=2)
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["dataset"]["scenes"] = ["../../etc"]
    (path / "zarr.json").write_text(json.dumps(meta))
    report = verify_cache(path)
    assert kinds(report) == {(None, "manifest")} and "invalid scene name" in report.problems[0].message


def test_cli_exit_status_and_json(make_cache):
    path = make_cache(scenes=2, frames=3)
    runner = CliRunner()
    ok = runner.invoke(main, ["verify", str(path)])
    assert ok.exit_code == 0 and "OK" in ok.output
    chunk = path / "scenes" / S1 / "features" / "c" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-7])
    bad = runner.invoke(main, ["verify", str(path), "--json"])
    assert bad.exit_code == 1
    out = json.loads(bad.stdout.strip().splitlines()[-1])
    assert out["ok"] is False
    assert {(p["scene"], p["kind"], p["frame"]) for p in out["problems"]} == {(S1, "unreadable", 0)}
    text = runner.invoke(main, ["verify", str(path), "--scenes", S0])
    assert text.exit_code == 0, text.output  # only the intact scene was checked


@pytest.mark.parametrize("quick", [False, True])
def test_verify_reads_what_open_cache_reads(make_cache, quick):
    path = make_cache(scenes=1, frames=3)
    assert open_cache(path).complete_scenes() == [S0]
    assert verify_cache(path, quick=quick, scenes=[S0, "nope"]).problems[0].kind == "missing_scene"


def test_uint8_cache_verifies_and_damaged_features_fail(make_cache):
    """uint8 features: moments recomputed from the dequantized codes agree with the recorded (unquantized) ones
    within the quantization bound; a changed code, a truncated chunk or a wrong scale are all found."""
    path = make_cache(scenes=2, frames=6, features="uint8")
    assert verify_cache(path).ok, verify_cache(path).problems
    assert verify_cache(path, quick=True).ok
    group = zarr.open_group(str(path / "scenes" / S0), mode="r+")
    assert np.dtype(group["features"].dtype) == np.uint8
    row = int(group["cell_offsets"][:][4]) + 2  # a cell of frame 4
    q = group["features"][row]
    q[1] = (int(q[1]) + 7) % 256
    group["features"][row] = q
    assert kinds(verify_cache(path)) == {(S0, "checksum")}
    chunk = path / "scenes" / S1 / "features" / "c" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-5])
    unreadable = [p for p in verify_cache(path).problems if p.scene == S1]
    assert [(p.kind, p.frame) for p in unreadable] == [("unreadable", 0)] and "features" in unreadable[0].message


def test_uint8_dequantization_attributes_are_checked(make_cache):
    path = make_cache(scenes=1, frames=4, features="uint8")
    group = zarr.open_group(str(path / "scenes" / S0), mode="r+")
    attrs = dict(group.attrs)
    good = dict(attrs)
    attrs["feature_scale"] = [2 * s for s in attrs["feature_scale"]]  # other values, same stored bytes
    group.attrs.put(attrs)
    report = verify_cache(path)
    assert kinds(report) == {(S0, "scene_stats")}, report.problems
    del attrs["feature_offset"]
    group.attrs.put(attrs)
    report = verify_cache(path)
    assert kinds(report) == {(S0, "attrs")} and "feature_offset" in report.problems[0].message
    group.attrs.put(good)
    assert verify_cache(path).ok
