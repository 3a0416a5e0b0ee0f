"""The student's validation curve (`train --val-cache`, ``log.val_every``): evaluate's scores at fixed iterations,
in val.csv, without changing what the run trains, kept exactly across a resume, refused on a mismatched cache."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from click.testing import CliRunner

from stages.train.checkpoint import load_checkpoint
from stages.train.config import CONFIG_DIR, ConfigError, TrainConfig, apply_overrides, load_config
from stages.train.evaluate import EvalConfig, evaluate
from stages.train.trainer import VAL_LOG, Trainer, TrainError, train

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**overrides) -> TrainConfig:
    return apply_overrides(load_config(CONFIG_DIR / "tiny.yaml"), {"log.progress": False, **overrides})


@pytest.fixture
def caches(make_cache):
    return (make_cache("train", scenes=2, frames=4, h=96, w=128, channels=8, seed=0),
            make_cache("val", scenes=1, frames=3, h=96, w=128, channels=8, seed=1))


def _rows(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_curve_scores_like_evaluate_and_leaves_training_unchanged(caches, tmp_path):
    train_cache, val_cache = caches
    cfg = tiny(**{"schedule.iters": 6, "log.val_every": 2, "log.val_scales": [0.75]})
    plain = train(tiny(**{"schedule.iters": 6}), train_cache, tmp_path / "plain")
    curved = train(cfg, train_cache, tmp_path / "curved", val_cache=val_cache)
    a, b = load_checkpoint(plain.checkpoint), load_checkpoint(curved.checkpoint)
    for k in a.model:  # eval mode, no gradient, no draw from a training stream: the same weights
        assert torch.equal(a.model[k], b.model[k]), k
    assert plain.val_curve == [] and not (tmp_path / "plain" / VAL_LOG).exists()

    rows = _rows(tmp_path / "curved" / VAL_LOG)
    assert [int(float(r["iter"])) for r in rows] == [2, 4, 6]
    assert all(int(float(r["frames"])) == 3 for r in rows)
    assert [r["iter"] for r in curved.val_curve] == [2.0, 4.0, 6.0]
    # the last row is what `evaluate` gives for the final checkpoint with the same protocol (scale 0.75)
    final = evaluate(curved.checkpoint, val_cache, EvalConfig(scales=(0.75,), workers=1), progress=False)
    last = curved.val_curve[-1]
    assert last["miou"] == pytest.approx(final.scores.miou, abs=1e-12)
    assert last["pixel_accuracy"] == pytest.approx(final.scores.pixel_accuracy, abs=1e-12)
    assert [last[f"iou_{n}"] for n in final.label_space.names] == pytest.approx(list(final.scores.iou), nan_ok=True)
    assert float(rows[-1]["miou"]) == pytest.approx(final.scores.miou, rel=1e-5)  # val.csv: 6 significant digits


def test_curve_survives_a_resume_without_duplicate_rows(caches, tmp_path):
    train_cache, val_cache = caches
    cfg = tiny(**{"schedule.iters": 6, "log.val_every": 2, "log.checkpoint_every": 1})
    straight = train(cfg, train_cache, tmp_path / "straight", val_cache=val_cache)
    train(cfg, train_cache, tmp_path / "resumed", val_cache=val_cache, stop_after=3)
    assert [r["iter"] for r in _rows(tmp_path / "resumed" / VAL_LOG)] == ["2"]
    resumed = train(cfg, train_cache, tmp_path / "resumed", val_cache=val_cache, resume=True)
    assert [r["iter"] for r in resumed.val_curve] == [2.0, 4.0, 6.0]
    assert [r["miou"] for r in _rows(tmp_path / "straight" / VAL_LOG)] == \
        [r["miou"] for r in _rows(tmp_path / "resumed" / VAL_LOG)]
    assert [r["miou"] for r in straight.val_curve] == pytest.approx([r["miou"] for r in resumed.val_curve], rel=1e-5)


def test_curve_needs_a_matching_validation_cache(caches, make_cache, tmp_path):
    train_cache, _ = caches
    with pytest.raises(TrainError, match="--val-cache"):
        Trainer(tiny(**{"log.val_every": 2}), train_cache, tmp_path / "none")
    other = make_cache("other-teacher", scenes=1, frames=2, h=96, w=128, channels=4)  # 4 feature channels
    with pytest.raises(TrainError, match="made differently"):
        Trainer(tiny(), train_cache, tmp_path / "other", val_cache=other)
    with pytest.raises(ConfigError, match="val_scales"):
        tiny(**{"log.val_scales": [1.0, -0.5]})
    with pytest.raises(ConfigError, match="val_every"):
        tiny(**{"log.val_every": -1})


def test_cli_prints_the_curve(caches, tmp_path):
    from pipeline.cli import main

    train_cache, val_cache = caches
    config = tmp_path / "tiny.yaml"
    config.write_text((CONFIG_DIR / "tiny.yaml").read_text())
    result = CliRunner().invoke(main, ["train", "--cache", str(train_cache), "--val-cache", str(val_cache),
                                       "--val-every", "2", "--iters", "4", "--config", str(config),
                                       "--set", "log.val_scales=[0.5,1.0]", "--out", str(tmp_path / "run"),
                                       "--quiet", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert [r["iter"] for r in summary["val_curve"]] == [2.0, 4.0]
    assert 0.0 <= summary["val_curve"][-1]["miou"] <= 1.0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["log"]["val_scales"] == [0.5, 1.0]
