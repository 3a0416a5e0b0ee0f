"""`make demo` at tiny size: the whole pipeline through the CLI, then a second run reuses what is valid."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def test_demo_smoke_end_to_end(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "pipeline.demo", "--smoke", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = (out / "report.md").read_text()
    assert "| baseline |" in report and "| paired |" in report
    for fig in ("curves.png", "per_class_iou.png", "coverage_0.png"):
        assert (out / "figures" / fig).stat().st_size > 1000
    assert "make extract-scannet" in report and "distill-cache inspect" in report
    assert (out / "figures" / "teacher_curve.png").stat().st_size > 1000 and "## The 3D teacher" in report
    # results.json: what a script reads instead of the report
    res = json.loads((out / "results.json").read_text())
    assert 0.0 <= res["teacher"]["miou"] <= 1.0 and res["teacher"]["seconds"] > 0
    assert res["teacher"]["extra_scenes"] == 2 and len(res["teacher"]["curve"]) == 2
    assert res["teacher"]["point_head"] is True and "per-point head" in report  # the recipe's teacher scores points
    for mode in ("baseline", "paired"):
        st = res["students"][mode]
        assert 0.0 <= st["miou"] <= 1.0 and 0.0 <= st["pixel_accuracy"] <= 1.0 and st["seconds"] > 0
        assert 0.0 < st["class_prior_miou"] < 1.0
        # the learning curve (train --val-cache): scored at iterations 2 and 4, the last one as evaluate scores it
        assert [c["iter"] for c in st["val_curve"]] == [2, 4]
        assert st["val_curve"][-1]["miou"] == pytest.approx(st["miou"], abs=1e-6)
    assert res["paired_minus_baseline"] == pytest.approx(res["students"]["paired"]["miou"]
                                                         - res["students"]["baseline"]["miou"])
    assert res["config"]["teacher"]["architecture"] == "Res16UNet14S" and res["config"]["smoke"] is True
    assert "--extra-root" in report and "one seed" in report
    assert "Validation mIoU during training (iterations 2, 4" in report and "--val-cache" in report
    # a second run reuses the world, the teacher, the caches' complete scenes and the students
    r2 = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert r2.returncode == 0, r2.stdout[-3000:] + r2.stderr[-3000:]
    assert r2.stdout.count("(reused)") >= 4
    assert "scenes already complete" in r2.stdout + r2.stderr
    # the students' training seconds survive a run that reuses them
    res2 = json.loads((out / "results.json").read_text())
    assert res2["students"]["paired"]["seconds"] == res["students"]["paired"]["seconds"]


def test_outputs_of_another_configuration_are_remade(tmp_path, capsys):
    """A demo folder made with other settings (an older release, another --iters) is not reused as if valid."""
    from pipeline.demo import Demo, DemoConfig

    out = tmp_path / "demo"
    Demo(DemoConfig(out=out, smoke=True)).check_stamp()  # records the configuration
    for d in ("world", "cache-train", "student-paired"):
        (out / d).mkdir()
    (out / "teacher.pth").write_bytes(b"x")
    Demo(DemoConfig(out=out, smoke=True)).check_stamp()  # same configuration: everything stays
    assert (out / "world").is_dir() and (out / "teacher.pth").exists()
    cfg = DemoConfig(out=out, smoke=True)
    cfg.recipe.student.iters = 7
    Demo(cfg).check_stamp()
    assert "student differ" in capsys.readouterr().out
    assert not any((out / p).exists() for p in ("world", "cache-train", "student-paired", "teacher.pth"))
