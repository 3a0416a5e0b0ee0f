"""`distill-cache predict` on files, folders and a `.sens` (skips counted and named, outputs at the inputs' sizes, in
the label space's ids, nothing written outside --out); `export` then `predict --onnx` agreeing with the checkpoint;
`evaluate --protocol`."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from cache_schema import SCANNET20
from pipeline.cli import main
from stages.extract.formats.records import FrameRecord
from stages.extract.formats.scannet_sens import write_sens

pytestmark = pytest.mark.usefixtures("one_thread")


def photo(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return cv2.resize((rng.random((6, 8, 3)) * 255).astype(np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)


def write_scene_sens(path: Path, rng: np.random.Generator, frames: int = 4) -> None:
    """A small .sens whose frame 2 has a broken JPEG (its start marker zeroed)."""
    k = np.array([[60.0, 0, 32], [0, 60.0, 24], [0, 0, 1]])
    records = [FrameRecord(frame_id=i, image=photo(rng, 48, 64), intrinsics=k, pose=np.eye(4),
                           depth=np.ones((24, 32), np.float32), depth_intrinsics=k / 2) for i in range(frames)]
    write_sens(path, records, color_intrinsics=k, depth_intrinsics=k / 2, color_size=(64, 48), depth_size=(32, 24))
    data = bytearray(path.read_bytes())
    soi = [i for i in range(len(data) - 2) if data[i:i + 3] == b"\xff\xd8\xff"]
    data[soi[2]:soi[2] + 3] = b"\0\0\0"
    path.write_bytes(bytes(data))


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def test_predict_files_folders_and_sens(make_student_checkpoint, tmp_path):
    ckpt, _ = make_student_checkpoint("paired")
    rng = np.random.default_rng(0)
    inputs = tmp_path / "in"
    (inputs / "photos" / "sub").mkdir(parents=True)
    sizes = {"big": (90, 140), "photos/a": (40, 50), "photos/sub/b": (70, 64)}  # larger and smaller than the crop
    cv2.imwrite(str(inputs / "big.jpg"), photo(rng, *sizes["big"]))
    cv2.imwrite(str(inputs / "photos" / "a.png"), photo(rng, *sizes["photos/a"]))
    cv2.imwrite(str(inputs / "photos" / "sub" / "b.jpg"), photo(rng, *sizes["photos/sub/b"]))
    (inputs / "photos" / "broken.jpg").write_bytes(b"not a jpeg at all")
    (inputs / "photos" / "notes.txt").write_text("not an image: ignored")
    write_scene_sens(inputs / "scene.sens", rng)
    before = files_under(tmp_path)
    out = inputs / "photos" / "predictions"  # inside an input folder: its own outputs are never inputs
    res = CliRunner().invoke(main, ["predict", "--checkpoint", str(ckpt), str(inputs / "big.jpg"),
                                    str(inputs / "scene.sens"), str(inputs / "photos"), "--out", str(out),
                                    "--frame-skip", "2", "--batch-size", "2", "--quiet", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["predicted"] == 4
    summary = json.loads((out / "predictions.json").read_text())
    images = {i["name"]: i for i in summary["images"]}
    # the first batch (two sizes) is written before photos/ is listed: the outputs in it are not inputs
    assert list(images) == ["big", "scene/frame-000000", "photos/a", "photos/sub/b"]
    assert summary["counts"] == {"predicted": 4, "skipped": 2}
    assert [(Path(s["source"]).name, s["reason"]) for s in summary["skipped"]] == [
        ("scene.sens:frame 2", "corrupt colour frame"), ("broken.jpg", "unreadable or corrupt image")]
    assert summary["protocol"]["window"] == [65, 65] and summary["model"]["label_space"] == SCANNET20.name
    for name, entry in images.items():
        h, w = sizes.get(name, (48, 64))
        assert (entry["height"], entry["width"]) == (h, w)
        labels = cv2.imread(str(out / entry["labels"]), cv2.IMREAD_UNCHANGED)
        assert labels.shape == (h, w) and labels.dtype == np.uint8
        assert set(np.unique(labels)) <= set(SCANNET20.ids)  # NYU40 ids, as the datasets' label images
        fractions = {SCANNET20.names[SCANNET20.ids.index(i)]: float((labels == i).mean()) for i in np.unique(labels)}
        assert entry["classes"] == pytest.approx(fractions, abs=1e-5) and entry["seconds"] >= 0
        picture = cv2.imread(str(out / entry["overlay"]))
        assert picture.shape[0] >= h and picture.shape[1] > w  # the image and a legend beside it
    assert files_under(tmp_path) - files_under(out) == before  # nothing written outside --out


def test_export_then_predict_with_onnx(make_student_checkpoint, tmp_path):
    pytest.importorskip("onnxruntime")
    ckpt, _ = make_student_checkpoint("baseline", random_stats=True)
    runner = CliRunner()
    model = tmp_path / "deploy" / "student.onnx"
    res = runner.invoke(main, ["export", "--checkpoint", str(ckpt), "--format", "onnx", "--out", str(model),
                               "--json"])
    assert res.exit_code == 0, res.output
    exported = json.loads(res.stdout.strip().splitlines()[-1])
    assert exported["input_size"] == [65, 65] and exported["max_rel_diff"] <= 1e-4
    cv2.imwrite(str(tmp_path / "room.png"), photo(np.random.default_rng(1), 90, 140))
    labels = {}
    for flag, path in (("--checkpoint", ckpt), ("--onnx", model)):
        out = tmp_path / f"out{flag}"
        res = runner.invoke(main, ["predict", flag, str(path), str(tmp_path / "room.png"), "--out", str(out),
                                   "--scales", "0.75,1.0", "--flip", "--quiet"])
        assert res.exit_code == 0, res.output
        labels[flag] = cv2.imread(str(out / "labels" / "room.png"), cv2.IMREAD_UNCHANGED)
        runtime = json.loads((out / "predictions.json").read_text())["model"]["runtime"]
        assert runtime == ("onnxruntime" if flag == "--onnx" else "pytorch")
    assert (labels["--checkpoint"] == labels["--onnx"]).mean() >= 0.999  # equal up to float ties
    res = runner.invoke(main, ["predict", "--onnx", str(model), str(tmp_path / "room.png"), "--out",
                               str(tmp_path / "x"), "--window", "whole"])
    assert res.exit_code != 0 and "only takes 65x65" in res.output
    res = runner.invoke(main, ["predict", str(tmp_path / "room.png"), "--out", str(tmp_path / "y")])
    assert res.exit_code != 0 and "exactly one of --checkpoint and --onnx" in res.output


def test_evaluate_protocols(make_student_checkpoint):
    ckpt, cache = make_student_checkpoint("paired")
    runner = CliRunner()
    common = ["evaluate", "--checkpoint", str(ckpt), "--cache", str(cache), "--json", "--quiet", "--workers", "1",
              "--compare-size", "native"]
    paper = json.loads(runner.invoke(main, common).stdout.strip().splitlines()[-1])["protocol"]
    assert (paper["scales"], paper["flip"], paper["window"]) == ([1.0], False, None)
    res = runner.invoke(main, [*common, "--protocol", "release", "--scales", "1.0"])
    assert res.exit_code == 0, res.output
    release = json.loads(res.stdout.strip().splitlines()[-1])["protocol"]
    assert (release["scales"], release["flip"], release["window"]) == ([1.0], True, [65, 65])
