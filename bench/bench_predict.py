"""`predict` throughput of the deployed student at 640×480: PyTorch vs onnxruntime on the same images in the same
run, and the cost factor of multi-scale + flip testing (the authors' release protocol) over single scale.

    python -m bench.bench_predict                       # PSPNet-50 student, 4 images, 5 interleaved rounds
    python -m bench.bench_predict --depth 18 --images 2 --repeats 3

The student is the distilled one (paired: branch with DN1/DN2, 96 channels, 20 classes) with random weights (speed
does not depend on them), run through `Predictor` exactly as `distill-cache predict` runs it minus file I/O:
normalization, 473×473 sliding windows (a 640×480 image takes 4), softmax, argmax, stored ids. onnxruntime runs
the same student exported at 473×473 with as many intra-op threads as torch has. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import emit, smooth_image
from cache_schema import SCANNET20
from stages.train.model.student import Student, StudentConfig
from stages.train.predict import DeployedStudent, DeploymentInfo, InferenceConfig, Predictor
from stages.train.predict.export import write_onnx
from stages.train.predict.runtime import OnnxRuntime, TorchRuntime
from stages.train.trainer import student_config_to_json

RELEASE_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def seconds_per_image(predictor: Predictor, images: list[np.ndarray], batch: int) -> float:
    t = time.perf_counter()
    for i in range(0, len(images), batch):
        predictor.predict(images[i:i + batch])
    return (time.perf_counter() - t) / len(images)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=50)
    ap.add_argument("--channels", type=int, default=96)
    ap.add_argument("--size", default="640x480", help="WxH of the images")
    ap.add_argument("--crop", type=int, default=473, help="the training crop: predict's sliding window")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--batch", type=int, default=2, help="images per predict call")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds (PyTorch, onnxruntime) after a warm-up")
    ap.add_argument("--multiscale-images", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch and onnxruntime threads (0 = torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    w, h = (int(v) for v in args.size.split("x"))
    torch.manual_seed(0)
    student = Student(StudentConfig(depth=args.depth, num_classes=SCANNET20.num_classes,
                                    feature_channels=args.channels))
    student.set_target_stats(torch.zeros(args.channels), torch.ones(args.channels))
    model = DeployedStudent(student)
    info = DeploymentInfo(label_space=SCANNET20, crop=args.crop, base_size=None, mode="paired", iteration=0,
                          student_config=json.loads(student_config_to_json(student.config)), cache=None)
    single = InferenceConfig(window=(args.crop, args.crop), max_batch=2 * args.batch)
    multi = InferenceConfig(scales=RELEASE_SCALES, flip=True, window=(args.crop, args.crop), max_batch=2 * args.batch)
    rng = np.random.default_rng(0)
    images = [smooth_image(rng, h, w) for _ in range(args.images)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "student.onnx"
        t = time.perf_counter()
        write_onnx(model, path, torch.randn(1, 3, args.crop, args.crop))
        export_s = time.perf_counter() - t
        torch_pred = Predictor(TorchRuntime(model), info, single)
        ort_runtime = OnnxRuntime(path, threads)
        ort_pred = Predictor(ort_runtime, info, single)
        x = torch_pred.normalize(images[:1])[:, :, :args.crop, :args.crop]
        with torch.no_grad():
            ref = model(x)
        rel = float((ort_runtime(x) - ref).abs().max() / ref.abs().max())
        seconds_per_image(torch_pred, images[:1], 1)  # warm-up: allocator, thread pools, onnxruntime's arena
        seconds_per_image(ort_pred, images[:1], 1)
        t_torch, t_ort = [], []
        for _ in range(args.repeats):
            t_torch.append(seconds_per_image(torch_pred, images, args.batch))
            t_ort.append(seconds_per_image(ort_pred, images, args.batch))
        ms_pred = Predictor(TorchRuntime(model), info, multi)
        t_multi = seconds_per_image(ms_pred, images[:args.multiscale_images], args.batch)
        t_single = seconds_per_image(torch_pred, images[:args.multiscale_images], args.batch)
    import onnxruntime

    s_torch, s_ort = statistics.median(t_torch), statistics.median(t_ort)
    emit({"bench": "predict", "device": "cpu", "threads": threads, "depth": args.depth, "channels": args.channels,
          "size": args.size, "crop": args.crop, "images": args.images, "batch": args.batch, "repeats": args.repeats,
          "windows_per_image": single.forward_views((h, w)), "onnx_export_s": round(export_s, 2),
          "onnxruntime_version": onnxruntime.__version__, "torch_version": torch.__version__,
          "max_rel_diff_onnx_vs_torch": rel,
          "torch_images_per_s": round(1 / s_torch, 4), "onnxruntime_images_per_s": round(1 / s_ort, 4),
          "onnxruntime_over_torch": round(s_torch / s_ort, 4),
          "multiscale": {"scales": list(RELEASE_SCALES), "flip": True, "images": args.multiscale_images,
                         "windows_per_image": multi.forward_views((h, w)),
                         "seconds_per_image": round(t_multi, 3), "single_seconds_per_image": round(t_single, 3),
                         "factor": round(t_multi / t_single, 3)}})


if __name__ == "__main__":
    main()
