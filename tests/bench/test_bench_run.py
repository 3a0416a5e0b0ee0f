"""`python -m bench.run`: quick projection pass into a temp folder, failure recording, README table splicing."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# `bench` is not an installed package: it is importable from the repository root only (what `python -m pytest`
# from the root gives; the bare `pytest` entry point does not), so put the root first.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
bench_run = importlib.import_module("bench.run")
END, START, Benchmark = bench_run.END, bench_run.START, bench_run.Benchmark
render_table, row, rows_for = bench_run.render_table, bench_run.row, bench_run.rows_for
run_benchmark, update_readme = bench_run.run_benchmark, bench_run.update_readme


def test_quick_projection_writes_results_and_table(tmp_path):
    out = tmp_path / "bench"
    p = subprocess.run([sys.executable, "-m", "bench.run", "--quick", "--only", "projection", "--out", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert set(results["benchmarks"]) == {"projection"}  # nothing else run, nothing carried over
    entry = results["benchmarks"]["projection"]
    assert entry["status"] == "ok" and entry["mode"] == "quick" and entry["device"] == "cpu"
    sizes = entry["results"][0]["sizes"]
    assert set(sizes) == {"640x480", "1296x968"}
    assert all(m["pixel"]["points_per_s"] > 0 and m["reference_points_per_s"] > 0 for m in sizes.values())
    assert results["machine"]["cores"] >= 1
    rows = [r for r in results["rows"] if r["item"] == "1"]
    assert len(rows) == 4
    first = rows[0]
    assert first["measure"].startswith("Projection 640x480")
    assert first["status"] in ("met", "**missed**")
    ratio = sizes["640x480"]["pixel"]["points_per_s"] / sizes["640x480"]["reference_points_per_s"]
    assert abs(first["ratio"] - ratio) <= 1e-3 * ratio
    readme = (out / "README.md").read_text()
    assert START in readme and END in readme
    table = readme.split(START, 1)[1].split(END, 1)[0]
    assert "| # | measure | value | reference | ratio | target | status | note |" in table
    assert table.count("| 1 | Projection") == 4
    assert "## What each row measures" in readme  # started from the hand-written template
    # the repository's own files were not touched by a run into --out
    assert (REPO / "bench" / "README.md").read_text().count(START) == 1


def test_rerun_keeps_previous_results_and_render_only(tmp_path):
    out = tmp_path / "bench"
    out.mkdir()
    fake = {"status": "ok", "item": "4", "mode": "full", "device": "cpu", "results": [{
        "bench": "train_step", "device": "cpu", "depth": 50, "batch": 2, "size": 233, "amp": "off", "repeats": 10,
        "baseline_step_s": 1.0, "paired_step_s": 1.2, "ratio": 1.2, "meets_target": False,
        "inference": {"time_with_branch_s": 0.5, "time_without_branch_s": 0.5, "time_ratio": 1.0,
                      "params_ratio": 1.0, "gmacs_with_branch": 10.0, "gmacs_without_branch": 10.0}}]}
    (out / "results.json").write_text(json.dumps({"benchmarks": {"train_step": fake}}))
    p = subprocess.run([sys.executable, "-m", "bench.run", "--render-only", "--out", str(out)], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    step = results["rows"][0]
    assert step["measure"] == "Training step: distilled vs baseline"
    assert step["ratio"] == 1.2 and step["status"] == "**missed**" and step["target"] == "≤ 1.10×"
    assert "| **missed** |" in (out / "README.md").read_text()


def test_failed_benchmark_is_recorded_not_raised():
    entry = run_benchmark(Benchmark("bogus", "bench.no_such_benchmark", "9", ()), quick=True, device="cpu",
                          timeout=120)
    assert entry["status"] == "failed" and entry["returncode"] != 0
    assert "no_such_benchmark" in entry["stderr_tail"]
    rows = rows_for("bogus", entry)
    assert rows[0]["status"] == "failed" and "no_such_benchmark" in rows[0]["note"]


def test_results_of_unknown_shape_become_a_failed_row():
    rows = rows_for("projection", {"status": "ok", "item": "1", "results": [{"unexpected": 1}]})
    assert rows[0]["status"] == "failed" and "KeyError" in rows[0]["note"]


def test_update_readme_replaces_only_the_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nhand-written | text\n\n{START}\nold table\n{END}\n\ntrailer\n")
    table = render_table({"rows": [row("1", "m | x", "1", ratio=2.0, target="≥ 1×", met=True)]})
    update_readme(readme, table)
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# Title\n\nhand-written | text\n") and "trailer" in text
    assert "| 1 | m \\| x | 1 | — | 2× | ≥ 1× | met |" in text
    update_readme(readme, "second")
    assert readme.read_text().count(START) == 1 and "second" in readme.read_text()
    bare = tmp_path / "new.md"
    update_readme(bare, "t")
    assert START in bare.read_text() and "\nt\n" in bare.read_text()


def test_cache_size_rows_per_feature_encoding():
    """bench_extraction --feature-dtype both gives one result per encoding: each gets its own size rows and target
    verdict; the timing rows come from the first (float16, the default)."""

    def result(dt: str, ratio: float) -> dict:
        return {"feature_dtype": dt, "paper_layout_bytes_per_frame": {"total": 150_000.0, "features_npy": 110_000.0,
                                                                       "index_map_npy": 40_000.0},
                "feature_content_ratio_paper_over_ours": ratio, "target_10x_met": ratio >= 10,
                "bytes_per_frame": {"features": 1000.0, "total": 60_000.0}, "budget_215KB_met": True,
                "channels": 96, "cells_per_frame": 150.0, "seconds_per_scene": {"teacher": 9.0, "write": 1.0},
                "seconds_per_scene_total": 10.0, "dominant_part": "teacher", "frames_per_scene": 8,
                "image_size": "640x480", "backend": "auto", "scannet_1513_scans_hours_at_this_rate": 4.2}

    rows = rows_for("extraction", {"status": "ok", "item": "2, 5",
                                   "results": [result("float16", 6.4), result("uint8", 15.7)]})
    size = {r["measure"]: r for r in rows if "bytes/frame" in r["measure"]}
    assert size["Cache size (float16 features): teacher content bytes/frame"]["status"] == "**missed**"
    assert size["Cache size (uint8 features): teacher content bytes/frame"]["status"] == "met"
    assert sum("Extraction: teacher" in r["measure"] for r in rows) == 1


def test_predict_rows():
    """bench_predict's JSON line becomes two rows: onnxruntime over PyTorch images/s, and the multi-scale factor."""
    result = {"bench": "predict", "threads": 2, "depth": 50, "channels": 96, "size": "640x480", "crop": 473,
              "images": 2, "batch": 2, "repeats": 3, "windows_per_image": 2, "onnxruntime_version": "1.32.0",
              "max_rel_diff_onnx_vs_torch": 2e-6, "torch_images_per_s": 0.25, "onnxruntime_images_per_s": 0.4,
              "onnxruntime_over_torch": 1.6,
              "multiscale": {"scales": [0.5, 1.75], "flip": True, "windows_per_image": 58, "seconds_per_image": 100.0,
                             "single_seconds_per_image": 4.0, "factor": 25.0}}
    rows = rows_for("predict", {"status": "ok", "item": "extra", "results": [result]})
    assert [r["ratio"] for r in rows] == [1.6, 25.0]
    assert rows[0]["value"] == "0.4 img/s" and rows[0]["reference"] == "PyTorch 0.25 img/s"
    assert "58 windows/image against 2" in rows[1]["note"] and rows[1]["value"] == "100 s/img"


def test_student_step_bench_runs_both_variants_and_makes_its_row():
    """The tuned-vs-plain student step (smoke sizes: the figures mean nothing, the plumbing does)."""
    entry = run_benchmark(bench_run.BY_NAME["student_step"], quick=False, device="cpu", timeout=300, smoke=True)
    assert entry["status"] == "ok", entry.get("stderr_tail")
    r = entry["results"][0]
    assert r["bench"] == "student_step" and r["steps"] == 1
    assert r["reference_step_s"] > 0 and r["tuned_step_s"] > 0
    assert abs(r["speedup"] - r["reference_step_s"] / r["tuned_step_s"]) < 1e-2 * r["speedup"]
    (row_,) = rows_for("student_step", entry)
    assert row_["item"] == "13" and row_["status"] in ("met", "**missed**")
