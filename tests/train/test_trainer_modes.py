"""The trainer's modes on CPU: a few iterations each, finite losses, logs and checkpoints; paired loss on covered
cells only; clear errors for inputs a mode cannot use."""

from __future__ import annotations

import copy
import csv
import math

import pytest
import torch

from stages.train.batch import Batch
from stages.train.checkpoint import load_checkpoint
from stages.train.config import CONFIG_DIR, TrainConfig, apply_overrides, load_config
from stages.train.model.student import Student
from stages.train.trainer import LOG_COLUMNS, Trainer, TrainError, train


def tiny(**overrides) -> TrainConfig:
    return apply_overrides(load_config(CONFIG_DIR / "tiny.yaml"),
                           {"log.progress": False, "schedule.iters": 2, **overrides})


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def cache(make_cache):
    return make_cache("cache", scenes=2, frames=4, h=96, w=128, channels=8)


@pytest.mark.parametrize(("mode", "disc"), [("baseline", "per-class"), ("paired", "per-class"),
                                          ("multitask", "per-class"), ("unpaired", "per-class"),
                                          ("unpaired", "shared")])
def test_each_mode_trains_with_finite_losses(mode, disc, cache, make_cache, tmp_path):
    images = make_cache("images", scenes=2, frames=4, h=96, w=128, channels=8, seed=3) if mode == "unpaired" \
        else cache
    result = train(tiny(mode=mode, **{"loss.disc": disc}), images, tmp_path / "run",
                   feature_cache=cache if mode == "unpaired" else None)
    assert result.iterations == 2
    expected = {"baseline": {"seg"}, "paired": {"seg", "paired"}, "multitask": {"seg", "depth"},
                "unpaired": {"seg", "adv_g", "adv_d"}}[mode]
    assert expected <= set(result.last)
    for k in ("loss", *expected):
        assert math.isfinite(result.last[k]), (k, result.last)
    with open(tmp_path / "run" / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iter"]) for r in rows] == [1, 2]
    assert tuple(rows[0]) == LOG_COLUMNS
    assert 0.0 <= float(rows[-1]["data_wait_frac"]) <= 1.0 and float(rows[-1]["frames_per_s"]) > 0
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt.iteration == 2
    has_branch = any(k.startswith("branch.") for k in ckpt.model)
    assert has_branch == (mode != "baseline")
    assert (ckpt.discriminators is not None) == (mode == "unpaired")


def test_tensorboard_events_hold_the_logged_scalars(cache, tmp_path):
    # CSV and TensorBoard logs; `make install` installs tensorboard (the `tensorboard` extra), so no skip here
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(tiny(**{"log.tensorboard": True, "log.every": 1}), cache, tmp_path / "run")
    with open(tmp_path / "run" / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    acc = EventAccumulator(str(tmp_path / "run" / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss/loss", "loss/seg", "loss/paired", "lr", "data_wait_frac", "frames_per_s"} <= tags
    for tag, column in (("loss/seg", "seg"), ("loss/paired", "paired"), ("lr", "lr")):
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [int(r["iter"]) for r in rows] == [1, 2]
        assert [e.value for e in events] == pytest.approx([float(r[column]) for r in rows], rel=1e-4)


def test_paired_loss_sees_covered_cells_only_and_dn1_has_cache_stats(cache, tmp_path):
    from cache_schema import open_cache

    trainer = Trainer(tiny(), cache, tmp_path / "run")
    mean, var = open_cache(cache).global_stats()
    dn1 = trainer.student.branch.dn1
    assert torch.allclose(dn1.target_mean, torch.from_numpy(mean).float())
    assert torch.allclose(dn1.target_var, torch.from_numpy(var).float())
    batch = next(iter(trainer.loader))
    batch = Batch(**{k: v.clone() for k, v in vars(batch).items()})
    assert batch.feature_mask.any() and (~batch.feature_mask).any()
    state = copy.deepcopy(trainer.student.state_dict())
    opt_state = copy.deepcopy(trainer.optimizer.state_dict())

    def paired_term(b: Batch) -> float:
        trainer.student.load_state_dict(state)
        trainer.optimizer.load_state_dict(opt_state)
        torch.manual_seed(0)  # same dropout masks
        return float(trainer.step(b)["paired"])

    base = paired_term(batch)
    noisy = Batch(**vars(batch))
    uncovered = (~batch.feature_mask).unsqueeze(1).expand_as(batch.features)
    noisy.features = torch.where(uncovered, torch.randn_like(batch.features) * 100, batch.features)
    assert paired_term(noisy) == pytest.approx(base, rel=1e-6)
    moved = Batch(**vars(batch))
    moved.features = batch.features + batch.feature_mask.unsqueeze(1).float()  # shift covered cells only
    assert paired_term(moved) != pytest.approx(base, rel=1e-6)
    trainer.close()


def test_mode_input_errors(cache, tmp_path):
    with pytest.raises(TrainError, match="needs --feature-cache"):
        Trainer(tiny(mode="unpaired"), cache, tmp_path / "a")
    with pytest.raises(TrainError, match="only used by --mode unpaired"):
        Trainer(tiny(mode="paired"), cache, tmp_path / "b", feature_cache=cache)
    with pytest.raises(TrainError, match="at least 2 per process"):
        Trainer(tiny(**{"data.batch_size": 1}), cache, tmp_path / "c")


def test_existing_run_needs_resume(cache, tmp_path):
    train(tiny(**{"schedule.iters": 1}), cache, tmp_path / "run")
    with pytest.raises(TrainError, match="--resume"):
        Trainer(tiny(), cache, tmp_path / "run")


def test_poly_schedule_warms_up_linearly_then_decays_to_zero():
    from stages.train.trainer import poly_factor

    assert [poly_factor(i, 10, 1.0) for i in (0, 5, 10)] == [1.0, 0.5, 0.0]
    f = [poly_factor(i, 12, 1.0, warmup=2) for i in range(13)]
    assert f[:3] == [0.5, 1.0, 1.0] and f[7] == 0.5 and f[12] == 0.0
    assert all(a >= b for a, b in zip(f[1:], f[2:], strict=False))


def test_adamw_option_trains_and_unknown_optimizers_are_refused(cache, tmp_path):
    cfg = tiny(**{"optim.name": "adamw", "optim.warmup": 1, "optim.lr": 1e-3})
    trainer = Trainer(cfg, cache, tmp_path / "run")
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    assert train(cfg, cache, tmp_path / "run2").iterations == 2
    with pytest.raises(ValueError, match="optim.name"):
        tiny(**{"optim.name": "lamb"}).validate()


def test_sqrt_inverse_class_weights_come_from_the_caches_label_maps(cache, tmp_path):
    """Counted from the cache's label maps (training ids), 1/sqrt(frequency) with unit mean; rare classes weigh
    more, and the weighted loss is the one the trainer optimises."""
    import numpy as np

    from cache_schema import open_cache
    from cache_schema.labels import sqrt_inverse_weights
    from stages.train.losses import segmentation_loss
    from stages.train.trainer import label_counts

    reader = open_cache(cache)
    trainer = Trainer(tiny(**{"loss.class_weights": "sqrt-inverse"}), cache, tmp_path / "run")
    space = trainer.label_space
    expect = np.zeros(space.num_classes, np.int64)
    for name in reader.complete_scenes():
        sc = reader.scene(name)
        for i in range(sc.num_frames):
            ids = space.to_train_ids(sc.read_frame(i).labels).ravel()
            expect += np.bincount(ids[ids != 255].astype(np.int64), minlength=space.num_classes)[:space.num_classes]
    np.testing.assert_array_equal(label_counts(reader, space), expect)
    w = trainer.class_weight.numpy()
    freq = expect / expect.sum()
    np.testing.assert_allclose(w, sqrt_inverse_weights(expect), rtol=1e-6)
    assert abs(float((w * freq).sum()) - 1.0) < 1e-5
    seen = freq > 0
    assert w[seen][np.argmin(freq[seen])] >= w[seen][np.argmax(freq[seen])]
    # a weighted loss differs from the plain one on the same logits
    logits, labels = torch.randn(1, space.num_classes, 4, 4), torch.randint(0, space.num_classes, (1, 4, 4))
    assert not torch.isclose(segmentation_loss(logits, labels), segmentation_loss(logits, labels, None, 0.4,
                                                                                    trainer.class_weight))
    assert Trainer(tiny(), cache, tmp_path / "run2").class_weight is None
    with pytest.raises(ValueError, match="class_weights"):
        tiny(**{"loss.class_weights": "inverse"}).validate()


def test_channels_last_trains_the_same_network(cache, tmp_path):
    # NHWC is a memory layout, not a different model: in fp32 the losses match the default layout's, the weights
    # move the same way (up to float rounding, amplified by the optimizer), the student's 4-D weights really are
    # channels-last, and the checkpoint loads into a plain (NCHW) student
    plain = train(tiny(mode="paired", seed=5), cache, tmp_path / "plain")
    nhwc_trainer = Trainer(tiny(mode="paired", seed=5, channels_last=True), cache, tmp_path / "nhwc")
    weights4d = [p for p in nhwc_trainer.student.parameters() if p.dim() == 4 and p.shape[-1] > 1]
    assert weights4d and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights4d)
    init = {k: v.detach().clone().contiguous() for k, v in nhwc_trainer.student.state_dict().items()}
    nhwc = nhwc_trainer.run()
    for k in ("seg", "paired"):
        assert nhwc.last[k] == pytest.approx(plain.last[k], rel=1e-4, abs=1e-5), k
    a = load_checkpoint(tmp_path / "plain" / "last.pt").model
    b = load_checkpoint(tmp_path / "nhwc" / "last.pt").model
    assert a.keys() == b.keys() == init.keys()
    moved = [k for k in a if a[k].is_floating_point() and a[k].dim() == 4]
    update = torch.cat([(a[k] - init[k]).flatten() for k in moved])
    gap = torch.cat([(b[k].contiguous() - a[k]).flatten() for k in moved])
    assert update.norm() > 0 and gap.norm() < 0.05 * update.norm(), (float(gap.norm()), float(update.norm()))
    Student(nhwc_trainer.student_config).load_state_dict(b)  # an NHWC run's checkpoint is an ordinary state_dict
