"""`make reproduce` at smoke size (one seed, end to end through the CLI), plus the §4.5 SSIM and table maths."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from pipeline.reproduce import DepthDecoder, ssim
from pipeline.reproduce_report import stats


def test_ssim_identity_is_one_and_noise_lowers_it():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 24, 32, generator=g)
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-5)
    previous = 1.0
    for sigma in (0.02, 0.1, 0.3):
        s = float(ssim(x, (x + sigma * torch.randn(x.shape, generator=g)).clamp(0, 1)).mean())
        assert s < previous
        previous = s
    assert previous < 0.8  # 0.67 for sigma 0.3 on uniform noise images


def test_ssim_of_two_constant_images_is_the_luminance_term():
    # by hand: variances and covariance vanish, so SSIM = (2ab + C1) / (a^2 + b^2 + C1), C1 = (0.01 L)^2
    a, b, c1 = 0.5, 0.25, 1e-4
    x, y = torch.full((1, 1, 9, 9), a), torch.full((1, 1, 9, 9), b)
    assert float(ssim(x, y)) == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-5)  # 0.80006


def test_ssim_mask_ignores_uncovered_cells():
    x = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    y = x.clone()
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask[..., :, :8] = True
    y[..., :, 8:] = 1 - y[..., :, 8:]  # garbage where there is no target
    assert float(ssim(x, y, mask)) == pytest.approx(1.0, abs=1e-5)
    assert float(ssim(x, y)) < 0.9
    assert math.isnan(float(ssim(x, y, torch.zeros_like(mask))))
    with pytest.raises(ValueError):
        ssim(x, y[..., :8])


def test_depth_decoder_keeps_the_grid_and_stats_use_sample_std():
    assert DepthDecoder(32)(torch.zeros(2, 32, 5, 7)).shape == (2, 1, 5, 7)
    s = stats([1.0, 2.0, 3.0, float("nan")])
    assert s["mean"] == 2.0 and s["std"] == 1.0 and s["n"] == 3


NUMBER = r"-?\d+\.\d+ ± \d+\.\d+"


def test_reproduce_smoke_end_to_end(tmp_path):
    out = tmp_path / "reproduce"
    cmd = [sys.executable, "-m", "pipeline.reproduce", "--preset", "smoke", "--seeds", "0", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    doc = json.loads((out / "results.json").read_text())
    assert doc["seeds"] == [0] and doc["config"]["preset"] == "smoke"
    assert doc["hardware"]["cpu_count"] >= 1 and doc["hardware"]["torch"]
    t = doc["tables"]
    for row in t["table2"]:
        for k in ("miou", "macc", "pixel_accuracy"):
            assert row[k]["n"] == 1 and 0.0 <= row[k]["mean"] <= 1.0 and row[k]["std"] == 0.0
    assert [r["run"] for r in t["table2"]] == ["baseline", "multitask", "paired"]
    for row in t["table7"]:
        assert math.isfinite(row["nyu_unpaired_miou"]["mean"])
        if row["paired_run"]:
            assert math.isfinite(row["A_val_miou"]["mean"]) and math.isfinite(row["nyu_generalization_miou"]["mean"])
    for row in t["table8"]:
        for k in ("A_val_miou", "B_val_miou", "nyu_test_miou"):
            assert 0.0 <= row[k]["mean"] <= 1.0
    for row in t["depth_ssim"]:
        assert -1.0 <= row["ssim"]["mean"] <= 1.0 and row["rmse_m"]["mean"] >= 0.0
    assert all(math.isfinite(s["seconds"]) and s["seconds"] > 0 for s in doc["steps"])
    # the variance split equals the cache's own global statistics and a direct per-class computation
    from cache_schema import open_cache

    train_cache = open_cache(out / "cache-A-train")
    _, var = train_cache.global_stats()
    fv = doc["feature_variance"]
    assert fv["total"] == pytest.approx(float(var.sum()), rel=1e-6)
    feats, labels = [], []
    for name in train_cache.complete_scenes():
        sc = train_cache.scene(name)
        blk = sc.read_block(0, sc.num_frames)
        feats.append(np.asarray(blk.features, np.float64))
        labels.append(np.asarray(blk.point_labels))
    f, lab = np.concatenate(feats), np.concatenate(labels)
    within = sum(((f[lab == k] - f[lab == k].mean(0)) ** 2).sum() for k in np.unique(lab)) / len(f)
    assert fv["class_explained"] == pytest.approx(1 - within / f.var(0).sum(), abs=1e-9)
    paired = next(r for r in doc["progress"] if r["run"] == "paired")
    assert paired["paired"]["end"]["n"] == 1 and "explained" in paired
    assert "## How far the students got" in (out / "report.md").read_text()

    report = (out / "report.md").read_text()
    for heading in ("## Table 2", "## Table 7", "## Table 8", "## §4.5", "## Configuration", "## Hardware",
                    "## Wall time per step"):
        assert heading in report
    # every table row carries numbers (mean ± std), only the shared-discriminator row has empty paired columns
    sections = report.split("## ")
    for name, rows in (("Table 2", 3), ("Table 7", 4), ("Table 8", 4), ("§4.5", 2)):
        body = next(s for s in sections if s.startswith(name))
        assert len(re.findall(r"^\| [^-|].*" + NUMBER, body, flags=re.M)) == rows, body
    assert "student seeds 0" in report and "train paired seed 0" in report
    # the unweighted-L_s ablation replaces the recipe's class weights (its flags come after the recipe's)
    for run, weights in (("baseline", "sqrt-inverse"), ("baseline-unweighted", "none"), ("paired-unweighted", "none")):
        run_cfg = json.loads((out / "students" / f"{run}-s0" / "config.json").read_text())
        assert run_cfg["loss"]["class_weights"] == weights, run
    assert [r["run"] for r in t["weighting"]] == ["baseline", "paired", "baseline-unweighted", "paired-unweighted"]
    assert "## The recipe's class weights or the paper's unweighted L_s?" in report
    assert "(input color+offset, per-point head)" in report  # the teacher the recipe trains

    # a second invocation reuses every step and writes the same tables
    r2 = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r2.returncode == 0, r2.stdout[-3000:] + r2.stderr[-3000:]
    assert "$ distill-cache" not in r2.stdout
    doc2 = json.loads((out / "results.json").read_text())
    assert doc2["tables"] == t
    # reused steps still tell how they were made: the report's command list is the same as the first run's
    assert all(s["reused"] for s in doc2["steps"])
    assert [s["command"] for s in doc2["steps"]] == [s["command"] for s in doc["steps"]]
    assert "distill-cache train-teacher" in (out / "report.md").read_text()


def test_claims_pair_students_by_seed():
    """A claim holds only when the per-seed differences clear two standard errors; one seed never resolves it."""
    from pipeline.reproduce_report import compare

    def res(values: dict[str, list[float]]) -> dict:
        return {run: {str(s): {"eval": {"A": {"miou": v}}} for s, v in enumerate(vs)} for run, vs in values.items()}

    clear = res({"paired": [0.30, 0.41, 0.52], "baseline": [0.20, 0.30, 0.41]})  # +0.10, +0.11, +0.11
    c = compare(clear, "paired", "baseline", "A")
    assert (c["verdict"], c["outcome"]) == ("holds here", "better")
    assert abs(c["difference"]["mean"] - 0.1067) < 1e-3
    assert abs(c["se"] - c["difference"]["std"] / 3 ** 0.5) < 1e-12
    noisy = res({"paired": [0.30, 0.20, 0.50], "baseline": [0.20, 0.30, 0.41]})  # +0.10, -0.10, +0.09
    assert compare(noisy, "paired", "baseline", "A")["verdict"] == "too close to call at n = 3 seeds"
    worse = res({"paired": [0.10, 0.20, 0.31], "baseline": [0.20, 0.30, 0.41]})
    assert compare(worse, "paired", "baseline", "A")["verdict"] == "fails here"
    one = res({"paired": [0.9], "baseline": [0.1]})
    assert compare(one, "paired", "baseline", "A")["verdict"] == "too close to call at n = 1 seed"
    assert compare(res({"paired": [0.5]}), "paired", "baseline", "A")["verdict"] == "not measured"


def test_runs_subset_keeps_the_tables_order_and_refuses_unknown_names(tmp_path):
    from pipeline.reproduce import PRESETS, RUNS, Reproduce

    r = Reproduce(PRESETS["smoke"], tmp_path, [0], ["paired", "baseline", "paired-label-embedding"])
    assert [x.name for x in r.runs] == ["baseline", "paired", "paired-label-embedding"]
    assert [x.name for x in Reproduce(PRESETS["smoke"], tmp_path, [0]).runs] == [x.name for x in RUNS]
    with pytest.raises(SystemExit, match="unknown runs: nope"):
        Reproduce(PRESETS["smoke"], tmp_path, [0], ["nope", "paired"])


def test_label_embedding_control_gets_the_teachers_channel_count(tmp_path):
    from pipeline.reproduce import teacher_channels

    (tmp_path / "t.pth.json").write_text(json.dumps({"config": {"architecture": "Res16UNet14S"}}))
    assert teacher_channels(tmp_path / "t.pth") == 48
    (tmp_path / "t.pth.json").write_text(json.dumps({"config": {"architecture": "Res16UNet34C"}}))
    assert teacher_channels(tmp_path / "t.pth") == 96


def test_the_reproductions_teacher_trains_longer_than_the_demos_and_nothing_else_differs():
    import dataclasses

    from pipeline.recipe import CpuRecipe
    from pipeline.reproduce import PRESETS, ReproduceConfig

    demo, rep = CpuRecipe(), PRESETS["cpu"].recipe
    assert rep.teacher.steps == 3 * demo.teacher.steps and ReproduceConfig().recipe == rep
    assert rep.world == demo.world and rep.student == demo.student
    same_budget = dataclasses.replace(rep.teacher, steps=demo.teacher.steps, eval_every=demo.teacher.eval_every)
    assert same_budget == demo.teacher
    assert "--point-head" in demo.teacher.args() and "--no-point-head" in PRESETS["gpu"].recipe.teacher.args()


def test_world_seed_moves_world_a_its_restyle_and_the_teachers_repository():
    from pipeline.reproduce import parse_args

    cfg, out, seeds, runs = parse_args(["--world-seed", "9", "--seeds", "3,4", "--runs", "baseline,paired"])
    assert (cfg.world_seed, cfg.nyu_world_seed, seeds, runs) == (9, 1, [3, 4], ["baseline", "paired"])
    rooms = cfg.recipe.world.rooms_args("r", cfg.world_seed)
    assert rooms[rooms.index("--seed") + 1] == "1009"
    cfg, *_ = parse_args(["--world-seed", "1"])
    assert (cfg.world_seed, cfg.nyu_world_seed) == (1, 2)  # never the NYU world's rooms
    cfg, *_ = parse_args([])
    assert (cfg.world_seed, cfg.nyu_world_seed, cfg.preset) == (0, 1, "cpu")
