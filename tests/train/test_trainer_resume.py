"""Checkpoints: weights_only round trip, exact resume (4 + 4 iterations == 8 straight), provenance refusal."""

from __future__ import annotations

import csv
import pickle

import pytest
import torch

from cache_schema import open_cache
from stages.train.checkpoint import CheckpointError, ProvenanceError, load_checkpoint
from stages.train.config import CONFIG_DIR, TrainConfig, apply_overrides, load_config
from stages.train.trainer import Trainer, TrainError, train


def tiny(**overrides) -> TrainConfig:
    return apply_overrides(load_config(CONFIG_DIR / "tiny.yaml"), {"log.progress": False, **overrides})


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def cache(make_cache):
    return make_cache("cache", scenes=2, frames=4, h=96, w=128, channels=8)


class NotAllowed:
    pass


def test_checkpoint_round_trip_with_weights_only(cache, tmp_path):
    trainer = Trainer(tiny(), cache, tmp_path / "run")
    path = trainer.save()
    trainer.close()
    raw = torch.load(path, weights_only=True)  # plain types and tensors only
    assert isinstance(raw["config_json"], str) and isinstance(raw["rng"]["torch"], torch.Tensor)
    ckpt = load_checkpoint(path)
    state = trainer.student.state_dict()
    assert ckpt.model.keys() == state.keys()
    assert all(torch.equal(ckpt.model[k], state[k]) for k in state)
    assert TrainConfig.from_json(ckpt.config_json) == trainer.cfg
    reader = open_cache(cache)
    assert ckpt.cache.fingerprint == reader.fingerprint
    assert ckpt.cache.manifest.fingerprint() == reader.fingerprint
    mean, var = reader.global_stats()
    assert torch.allclose(ckpt.cache.stats_mean, torch.from_numpy(mean))
    assert torch.allclose(ckpt.cache.stats_var, torch.from_numpy(var))
    assert ckpt.model["branch.dn1.target_stats_set"].item() is True
    assert ckpt.loader_state["epoch"] == 0 and ckpt.loader_state["position"] == 0
    assert not list((tmp_path / "run").glob(".*tmp*"))  # atomic write leaves no temporary behind


def test_checkpoint_refuses_pickled_objects_and_garbage(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"format": "distill-cache-student", "obj": NotAllowed()}, evil, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(evil)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_checkpoint(junk)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="not a distill-cache student checkpoint"):
        load_checkpoint(other)


def _log(path) -> list[tuple[int, str]]:
    with open(path, newline="") as f:
        return [(int(r["iter"]), r["loss"]) for r in csv.DictReader(f)]


def test_resume_continues_exactly(cache, tmp_path):
    cfg = tiny(**{"schedule.iters": 8, "log.checkpoint_every": 3})  # 4 batches/epoch: crosses an epoch
    straight = train(cfg, cache, tmp_path / "straight")
    first = train(cfg, cache, tmp_path / "resumed", stop_after=4)
    assert first.iterations == 4
    second = train(cfg, cache, tmp_path / "resumed", resume=True)
    assert second.iterations == 8
    a, b = load_checkpoint(straight.checkpoint), load_checkpoint(second.checkpoint)
    assert a.model.keys() == b.model.keys()
    for k in a.model:
        assert torch.equal(a.model[k], b.model[k]), k
    for sa, sb in zip(a.optimizer["state"].values(), b.optimizer["state"].values(), strict=True):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert a.loader_state == b.loader_state
    assert _log(tmp_path / "straight" / "log.csv") == _log(tmp_path / "resumed" / "log.csv")


def test_resume_on_another_cache_is_refused_unless_forced(cache, make_cache, tmp_path):
    cfg = tiny(**{"schedule.iters": 2})
    train(cfg, cache, tmp_path / "run", stop_after=1)
    with pytest.raises(TrainError, match="mode: 'paired' -> 'baseline'"):
        Trainer(tiny(mode="baseline", **{"schedule.iters": 2}), cache, tmp_path / "run", resume=True)
    other = make_cache("other", scenes=3, frames=4, h=96, w=128, channels=8)
    with pytest.raises(ProvenanceError, match="--force") as err:
        Trainer(cfg, other, tmp_path / "run", resume=True)
    assert "scenes" in str(err.value)  # the difference is shown
    result = train(cfg, other, tmp_path / "run", resume=True, force=True)
    assert result.iterations == 2
    assert load_checkpoint(result.checkpoint).cache.fingerprint == open_cache(other).fingerprint
