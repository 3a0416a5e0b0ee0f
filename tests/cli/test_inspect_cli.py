from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from cache_schema import open_cache
from pipeline.cli import main


def test_inspect_summary_and_json(make_cache):
    path = make_cache(scenes=2, frames=4, leave_incomplete=("scene0001_00",))
    r = CliRunner().invoke(main, ["inspect", str(path)])
    assert r.exit_code == 0, r.output
    assert "1 complete, 1 incomplete" in r.output and "bytes/frame" in r.output
    r = CliRunner().invoke(main, ["inspect", str(path), "--json"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.output)
    for key in ("schema_version", "fingerprint", "scenes_complete", "scenes_incomplete", "frames", "channels",
                "stride", "coverage", "bytes_per_frame", "stats", "teacher", "projection"):
        assert key in s
    assert s["scenes_complete"] == 1 and s["scenes_incomplete"] == 1 and s["frames"] == 4 and s["channels"] == 8
    cache = open_cache(path)
    sc = cache.scene("scene0000_00")
    assert abs(s["coverage"] - sc.num_cells / (4 * 6 * 8)) < 1e-9
    assert s["bytes_per_frame"]["total"] > s["bytes_per_frame"]["features"] > 0
    assert s["stats"]["count"] == sc.num_cells and len(s["stats"]["mean"]) == 8


def test_inspect_dump_and_render(make_cache, tmp_path):
    path = make_cache(scenes=1, frames=3)
    out = tmp_path / "f.npz"
    r = CliRunner().invoke(main, ["inspect", str(path), "--scene", "scene0000_00", "--frame", "2", "--dump", str(out)])
    assert r.exit_code == 0, r.output
    d = np.load(out)
    ref = open_cache(path).scene("scene0000_00").read_frame(2)
    assert d["image"].shape == (48, 64, 3) and d["image"].dtype == np.uint8
    np.testing.assert_array_equal(d["features"], ref.features)
    np.testing.assert_array_equal(d["cells"], ref.cells)
    assert tuple(d["grid_shape"]) == (6, 8)
    for k in ("labels", "point_index", "point_labels", "depth", "intrinsics", "pose"):
        assert k in d
    png = tmp_path / "f.png"
    r = CliRunner().invoke(main, ["inspect", str(path), "--frame", "1", "--render", str(png)])
    assert r.exit_code == 0, r.output
    import cv2

    img = cv2.imread(str(png))
    assert img.shape[0] == 48 + 22 and img.shape[1] == 64


def test_inspect_errors_are_clear(tmp_path, make_cache):
    r = CliRunner().invoke(main, ["inspect", str(tmp_path / "nope")])
    assert r.exit_code != 0 and "no cache" in r.output
    path = make_cache(scenes=1, frames=2)
    r = CliRunner().invoke(main, ["inspect", str(path), "--frame", "9", "--dump", str(tmp_path / "x.npz")])
    assert r.exit_code != 0 and "out of range" in r.output
