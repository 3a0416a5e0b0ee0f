"""Segmentation metric against an explicit-loop reference of the ScanNet 2D benchmark's definition."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cache_schema.labels import S3DIS13, SCANNET20, LabelSpace
from stages.train.metrics import SegmentationMetric


def reference_ious(pred_stored: np.ndarray, gt_stored: np.ndarray, space: LabelSpace) -> list[float]:
    """Straight from FORMATS.md "ScanNet 2D metric", one pixel at a time."""
    evaluated = set(space.ids)
    out = []
    for label in space.ids:
        tp = fp = fn = 0
        for p, g in zip(pred_stored.ravel().tolist(), gt_stored.ravel().tolist(), strict=True):
            if g == label and p == label:
                tp += 1
            elif g == label:
                fn += 1
            elif p == label and g in evaluated:
                fp += 1
        out.append(tp / (tp + fp + fn) if tp + fp + fn else math.nan)
    return out


def test_matches_reference_with_absent_classes_and_foreign_predictions() -> None:
    rng = np.random.default_rng(0)
    # ground truth: some evaluated classes, unlabelled 0 and non-evaluated NYU40 ids; classes 33, 34, 36 absent
    gt_pool = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 39, 0, 13, 22, 40])
    pred_pool = np.arange(0, 41)  # predictions also outside the 20 (e.g. another model's NYU40 output)
    metric = SegmentationMetric(SCANNET20)
    preds, gts = [], []
    for _ in range(3):
        gt = rng.choice(gt_pool, size=(2, 12, 16))
        pred = np.where(rng.random(gt.shape) < 0.5, gt, rng.choice(pred_pool, size=gt.shape))
        pred[pred == 36] = 35  # class 36 (bathtub): neither in gt nor predicted -> undefined IoU
        metric.update(torch.from_numpy(pred), torch.from_numpy(gt), pred_ids="stored")
        preds.append(pred)
        gts.append(gt)
    ref = reference_ious(np.concatenate(preds), np.concatenate(gts), SCANNET20)
    scores = metric.compute()
    np.testing.assert_allclose(scores.iou, ref, rtol=1e-12)
    bathtub = SCANNET20.ids.index(36)
    assert math.isnan(scores.iou[bathtub]) and math.isnan(scores.acc[bathtub])
    assert scores.iou[SCANNET20.ids.index(33)] == 0.0  # toilet: absent from gt but predicted -> defined, 0
    assert math.isclose(scores.miou, float(np.nanmean(ref)))
    assert "bathtub" in scores.table() and "-" in scores.table()


def test_training_id_predictions_map_back_to_stored_ids() -> None:
    rng = np.random.default_rng(1)
    gt = rng.choice(np.array([*SCANNET20.ids, 0, 13]), size=(2, 10, 10))
    pred_train = rng.integers(0, 20, size=gt.shape)
    pred_train[0, 0, :3] = 255  # no prediction
    metric = SegmentationMetric(SCANNET20)
    metric.update(torch.from_numpy(pred_train), torch.from_numpy(gt))
    stored = np.where(pred_train == 255, 255, np.asarray(SCANNET20.ids)[np.minimum(pred_train, 19)])
    np.testing.assert_allclose(metric.compute().iou, reference_ious(stored, gt, SCANNET20), rtol=1e-12)


def test_accuracies_and_training_id_ground_truth() -> None:
    gt = torch.tensor([[0, 0, 1, 1, 255, 2]])  # training ids; 255 = not evaluated
    pred = torch.tensor([[0, 1, 1, 1, 0, 0]])
    metric = SegmentationMetric(S3DIS13)
    metric.update(pred, gt, target_ids="train")
    s = metric.compute()
    assert s.tp[:3].tolist() == [1, 2, 0] and s.fn[:3].tolist() == [1, 0, 1] and s.fp[:3].tolist() == [1, 1, 0]
    assert math.isclose(s.pixel_accuracy, 3 / 5)
    assert math.isclose(s.macc, (0.5 + 1.0 + 0.0) / 3)
    assert math.isclose(s.miou, (1 / 3 + 2 / 3 + 0.0) / 3)
    js = s.to_json()
    assert js["classes"]["beam"]["iou"] is None and js["classes"]["floor"]["iou"] == pytest.approx(2 / 3)


def test_bad_inputs_are_refused() -> None:
    metric = SegmentationMetric(SCANNET20)
    with pytest.raises(ValueError, match="training ids"):
        metric.update(torch.tensor([20]), torch.tensor([1]))
    with pytest.raises(ValueError, match="shape"):
        metric.update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="stored ids"):
        metric.update(torch.tensor([1]), torch.tensor([300]))
    assert math.isnan(metric.compute().miou)
