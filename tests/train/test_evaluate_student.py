"""Evaluation of a student checkpoint: scores, prediction PNGs, compare size, test-time augmentation, provenance,
and that the deployed student never reads the cache's 3D side."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from cache_schema import SCANNET20, open_cache
from stages.train.batch import Batch
from stages.train.checkpoint import ProvenanceError, load_checkpoint
from stages.train.evaluate import EvalConfig, evaluate
from stages.train.predict import DeployedStudent, InferenceConfig, predict_probabilities

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def trained(make_student_checkpoint):
    """A paired student checkpoint (iteration 0 is enough for evaluation mechanics) and its cache."""
    return make_student_checkpoint("paired")


def native(**kw) -> EvalConfig:
    return EvalConfig(batch_size=4, workers=1, device="cpu", compare_size=None, **kw)


def evaluated_pixels(cache) -> int:
    reader = open_cache(cache)
    lut = SCANNET20.lookup_table()
    total = 0
    for s in reader.complete_scenes():
        sr = reader.scene(s)
        labels = sr.read_block(0, sr.num_frames).labels
        total += int((lut[labels] != 255).sum())
    return total


def test_scores_and_prediction_pngs(trained, tmp_path):
    ckpt, cache = trained
    result = evaluate(ckpt, cache, native(), save_predictions=tmp_path / "pred", progress=False)
    assert result.frames == 6 and result.compare_size is None and result.mode == "paired"
    s = result.scores
    assert int((s.tp + s.fn).sum()) == evaluated_pixels(cache)  # every evaluated ground-truth pixel counted once
    assert 0.0 <= s.pixel_accuracy <= 1.0
    js = result.to_json()
    assert set(js["classes"]) == set(SCANNET20.names)
    pngs = sorted((tmp_path / "pred").rglob("*.png"))
    assert [p.relative_to(tmp_path / "pred").as_posix() for p in pngs][:3] == \
        ["scene0000_00/000000.png", "scene0000_00/000010.png", "scene0000_00/000020.png"]
    assert len(pngs) == 6
    pred = cv2.imread(str(pngs[0]), cv2.IMREAD_UNCHANGED)
    assert pred.shape == (96, 128) and pred.dtype == np.uint8
    assert set(np.unique(pred)) <= set(SCANNET20.ids)  # stored NYU40 ids, not training ids


def test_scannet_is_compared_at_640x480(trained, tmp_path):
    ckpt, cache = trained
    cfg = EvalConfig(batch_size=4, workers=1, device="cpu")  # compare_size="auto"
    result = evaluate(ckpt, cache, cfg, save_predictions=tmp_path / "pred", progress=False)
    assert result.compare_size == (480, 640)
    assert int((result.scores.tp + result.scores.fn).sum()) == evaluated_pixels(cache) * 25  # 96x128 -> 480x640
    png = next((tmp_path / "pred").rglob("*.png"))
    assert cv2.imread(str(png), cv2.IMREAD_UNCHANGED).shape == (480, 640)


def test_evaluation_never_reads_3d_features(trained, monkeypatch):
    from stages.train.loader import CacheLoader

    ckpt, cache = trained
    clean = evaluate(ckpt, cache, native(), progress=False).scores
    original = CacheLoader.__iter__

    def poisoned(self):
        for b in original(self):
            yield Batch(image=b.image, labels=b.labels, features=torch.full_like(b.features, float("nan")),
                        feature_mask=torch.ones_like(b.feature_mask), feature_labels=torch.zeros_like(b.labels),
                        depth=torch.full_like(b.depth, float("nan")), index=b.index)

    monkeypatch.setattr(CacheLoader, "__iter__", poisoned)
    dirty = evaluate(ckpt, cache, native(), progress=False).scores
    assert np.array_equal(clean.tp, dirty.tp) and np.array_equal(clean.fp, dirty.fp)
    assert np.array_equal(clean.fn, dirty.fn)


def test_test_time_augmentation(trained):
    ckpt, _ = trained
    model = DeployedStudent.from_checkpoint(load_checkpoint(ckpt))
    x = torch.randn(2, 3, 41, 57)
    with torch.no_grad():
        plain = model(x).softmax(1)
    assert torch.allclose(predict_probabilities(model, x), plain, atol=1e-6)
    flipped = predict_probabilities(model, x, InferenceConfig(flip=True))
    assert torch.allclose(predict_probabilities(model, x.flip(-1), InferenceConfig(flip=True)), flipped.flip(-1),
                          atol=1e-5)
    multi = predict_probabilities(model, x, InferenceConfig(scales=(1.0, 0.75, 1.25), flip=True))
    assert multi.shape == plain.shape and torch.allclose(multi.sum(1), torch.ones(2, 41, 57), atol=1e-5)


def test_sliding_window_evaluation_goes_through_the_shared_path(trained, monkeypatch):
    """`window="crop"` runs the student only on crops of the training crop (tiny.yaml: 65) and records the protocol;
    a crop as large as the frame gives exactly the whole-frame scores."""
    import stages.train.evaluate as ev

    ckpt, cache = trained
    seen = set()
    original = DeployedStudent.forward

    def spy(self, image):
        seen.add(tuple(image.shape[-2:]))
        return original(self, image)

    monkeypatch.setattr(DeployedStudent, "forward", spy)
    result = evaluate(ckpt, cache, native(window="crop", flip=True), progress=False)
    assert seen == {(65, 65)} and result.frames == 6
    assert result.protocol["window"] == [65, 65] and result.protocol["flip"] is True
    assert result.to_json()["protocol"]["summary"] == "single scale + flip, 65x65 sliding window"
    monkeypatch.setattr(ev, "training_crop", lambda ckpt: 128)  # frames are 96x128: one padded window
    seen.clear()
    evaluate(ckpt, cache, native(window="crop"), progress=False)
    assert seen == {(128, 128)}
    whole = evaluate(ckpt, cache, native(window=(96, 128)), progress=False).scores
    assert np.array_equal(whole.tp, evaluate(ckpt, cache, native(), progress=False).scores.tp)


def test_evaluation_refuses_a_differently_made_cache(trained, make_cache):
    ckpt, _ = trained
    raw = make_cache("raw", scenes=1, frames=2, h=96, w=128, channels=8, fmt="raw")
    with pytest.raises(ProvenanceError, match="--force") as err:
        evaluate(ckpt, raw, native(), progress=False)
    assert "encoding" in str(err.value)
    result = evaluate(ckpt, raw, native(), force=True, progress=False, echo=lambda m: None)
    assert result.frames == 2 and result.warnings
