"""Exported students run in real runtimes (onnxruntime, TorchScript) and give the PyTorch student's logits, for a
baseline and a distilled student; the deployed network is the eval-mode student without auxiliary head; the
sidecar carries label space, normalization and provenance."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cache_schema import SCANNET20, open_cache
from stages.train.checkpoint import load_checkpoint
from stages.train.loader.augment import IMAGENET_MEAN, IMAGENET_STD
from stages.train.predict import DeployedStudent
from stages.train.predict.export import export_student

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytestmark = pytest.mark.usefixtures("one_thread")

TOL = 1e-4  # relative: max |exported - PyTorch| / max |PyTorch|


def rel_diff(ours: np.ndarray, ref: torch.Tensor) -> float:
    return float(np.abs(ours - ref.numpy()).max() / np.abs(ref.numpy()).max())


@pytest.mark.parametrize(("mode", "dynamic"), [("baseline", False), ("paired", True)])
def test_onnx_and_torchscript_give_the_pytorch_logits(make_student_checkpoint, tmp_path, mode, dynamic):
    ckpt_path, cache = make_student_checkpoint(mode, random_stats=True)
    onnx_res = export_student(ckpt_path, tmp_path / "student.onnx", "onnx", dynamic=dynamic)
    ts_res = export_student(ckpt_path, tmp_path / "student.pt", "torchscript")
    assert onnx_res.input_size == (None if dynamic else (65, 65)) and ts_res.input_size is None

    gen = torch.Generator().manual_seed(1)
    sizes = [(48, 80), (97, 129)] if dynamic else [(65, 65)]  # a dynamic model at sizes it was not traced at
    images = [torch.randn(3, 3, *hw, generator=gen) for hw in sizes]
    ckpt = load_checkpoint(ckpt_path)
    model = DeployedStudent.from_checkpoint(ckpt)
    session = ort.InferenceSession(str(onnx_res.path), providers=["CPUExecutionProvider"])
    scripted = torch.jit.load(str(ts_res.path))
    for x in images:
        with torch.no_grad():
            ref = model(x)
            ts_out = scripted(x).numpy()
        onnx_out = session.run(None, {"image": x.numpy()})[0]
        assert onnx_out.shape == ts_out.shape == tuple(ref.shape) == (3, 20, *x.shape[-2:])
        assert rel_diff(onnx_out, ref) <= TOL and rel_diff(ts_out, ref) <= TOL
        # running statistics, not batch statistics: an image's logits do not depend on its batch
        alone = session.run(None, {"image": x[:1].numpy()})[0]
        assert np.abs(alone[0] - onnx_out[0]).max() <= TOL * np.abs(onnx_out).max()

    # the deployed network: the branch for the distilled student, never the auxiliary head or discriminators
    names = {i.name for i in onnx.load(str(onnx_res.path)).graph.initializer}
    assert not any("aux_head" in n or "disc" in n for n in names)
    assert any("branch" in n for n in names) == (mode == "paired")
    assert not any("aux_head" in k for k in scripted.state_dict())

    side = json.loads(onnx_res.sidecar.read_text())
    assert onnx_res.sidecar.name == "student.onnx.json"
    assert side["classes"] == list(SCANNET20.names) and side["label_space"]["ids"] == list(SCANNET20.ids)
    assert side["input"]["mean"] == list(IMAGENET_MEAN) and side["input"]["std"] == list(IMAGENET_STD)
    assert side["provenance"]["cache"]["fingerprint"] == ckpt.cache.fingerprint == \
        open_cache(cache).manifest.fingerprint()
    assert side["provenance"]["mode"] == mode and side["crop"] == 65
    assert side["export"]["format"] == "onnx" and side["export"]["check"]["max_rel_diff"] <= TOL
    assert json.loads(ts_res.sidecar.read_text())["export"]["input_size"] is None


def test_deployed_student_stays_in_eval_mode(make_student_checkpoint):
    ckpt_path, _ = make_student_checkpoint("paired", random_stats=True)
    model = DeployedStudent.from_checkpoint(load_checkpoint(ckpt_path))
    model.train()
    assert not model.training and not any(m.training for m in model.modules())
    assert model.student.pspnet.aux_head is None
