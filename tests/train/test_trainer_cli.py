"""`distill-cache train` / `evaluate` end to end, config errors, and DDP with two gloo processes (torchrun)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from pipeline.cli import main
from stages.train.checkpoint import load_checkpoint
from stages.train.config import CONFIG_DIR, ConfigError, apply_overrides, load_config

ROOT = Path(__file__).resolve().parents[2]
TINY = str(CONFIG_DIR / "tiny.yaml")


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_config_defaults_are_the_papers():
    cfg = load_config()
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay, cfg.optim.power) == (0.01, 0.9, 1e-4, 0.9)
    assert (cfg.data.batch_size, cfg.data.crop, cfg.data.scale, cfg.data.rotate, cfg.data.flip) == \
        (16, 473, (0.5, 2.0), 10.0, True)
    assert (cfg.model.depth, cfg.optim.head_lr_mult) == (50, 10.0)
    assert (cfg.loss.seg, cfg.loss.paired, cfg.loss.adv) == (1.0, 0.03, 0.01)


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="optim.lrr"):
        apply_overrides(load_config(), ["optim.lrr=0.1"])
    with pytest.raises(ConfigError, match="expected an integer"):
        apply_overrides(load_config(), ["data.batch_size=abc"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  dept: 18\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*model\.dept"):
        load_config(bad)
    cfg = apply_overrides(load_config(), ["amp=off", "data.scale=[0.75, 1.5]", "model.pretrained=null"])
    assert cfg.amp == "off" and cfg.data.scale == (0.75, 1.5) and cfg.model.pretrained is None


def test_cli_train_then_evaluate_json(make_cache, tmp_path):
    cache = make_cache("cache", scenes=2, frames=4, h=96, w=128, channels=8)
    run = tmp_path / "run"
    runner = CliRunner()
    res = runner.invoke(main, ["train", "--cache", str(cache), "--out", str(run), "--config", TINY, "--iters", "2",
                               "--mode", "paired", "--quiet", "--json", "--set", "optim.momentum=0.8",
                               "--width", "0.5"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["iterations"] == 2 and Path(summary["checkpoint"]).exists()
    ckpt = load_checkpoint(summary["checkpoint"])
    assert json.loads(ckpt.config_json)["optim"]["momentum"] == 0.8
    assert json.loads(ckpt.student_config_json)["width"] == 0.5  # evaluate below rebuilds the half-width model
    res = runner.invoke(main, ["evaluate", "--checkpoint", summary["checkpoint"], "--cache", str(cache), "--json",
                               "--quiet", "--workers", "1", "--compare-size", "native"])
    assert res.exit_code == 0, res.output
    scores = json.loads(res.stdout.strip().splitlines()[-1])
    assert scores["frames"] == 8 and scores["label_space"] == "nyu40-scannet20"
    assert 0.0 <= scores["pixel_accuracy"] <= 1.0 and len(scores["classes"]) == 20
    res = runner.invoke(main, ["evaluate", "--checkpoint", summary["checkpoint"], "--cache", str(cache), "--quiet",
                               "--workers", "1", "--compare-size", "native"])
    assert res.exit_code == 0 and "mIoU" in res.stdout and "otherfurniture" in res.stdout


def test_cli_bad_config_key_is_a_clear_error(make_cache, tmp_path):
    cache = make_cache("cache", scenes=1, frames=2, h=48, w=64, channels=8)
    res = CliRunner().invoke(main, ["train", "--cache", str(cache), "--out", str(tmp_path / "run"), "--config", TINY,
                                    "--set", "optim.learning_rate=0.1"])
    assert res.exit_code != 0
    assert "unknown config key 'optim.learning_rate'" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(main, ["train", "--cache", str(cache), "--out", str(tmp_path / "run2"),
                                    "--config", TINY, "--resume"])
    assert res.exit_code != 0 and "no checkpoint" in res.output


def test_ddp_two_gloo_processes(make_cache, tmp_path):
    image_cache = make_cache("images", scenes=2, frames=4, h=96, w=128, channels=8, seed=1)
    feature_cache = make_cache("features", scenes=2, frames=4, h=96, w=128, channels=8, seed=2)
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "pipeline.cli", "train", "--cache", str(image_cache), "--feature-cache", str(feature_cache),
           "--mode", "unpaired", "--out", str(run), "--config", TINY, "--iters", "2", "--batch-size", "4",
           "--quiet", "--json"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summaries = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1  # only rank 0 reports, logs and checkpoints
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt.world_size == 2 and ckpt.iteration == 2
    assert {k.split(":")[0] for k in ckpt.rng} == {"rank0", "rank1"}
    assert ckpt.loader_state["world_size"] == 2
    assert ckpt.discriminators is not None
    rows = (run / "log.csv").read_text().strip().splitlines()
    assert len(rows) == 3  # header + one row per iteration, written once
