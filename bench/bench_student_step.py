"""The CPU recipe's student step (PSPNet-18 at width 0.25, batch 16, 97² crops, bf16 + channels-last) as `train`
runs it, against the same step with PyTorch's plain ops: logits upsampled by ``F.interpolate``, the cross-entropy
over NCHW logits, and glibc's default allocator.

    python bench/bench_student_step.py                  # 2 rounds of 20 timed steps per variant

What the tuned step changes (both give the same loss): the training upsampling is two matrix products whose
result lies channels-last, so the cross-entropy reads (pixels, K) rows (``stages/train/model/pspnet.py``); and the
process keeps freed memory in the heap (``pipeline/allocator.py``), so the step's 12 MB buffers are not
page-faulted in again every step. Each variant runs in its own process (the allocator is per process); the rounds
interleave them so that machine noise hits both alike. Prints one JSON line; the target is a speed-up >= 1.2x.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET = 1.2


def child(variant: str, args: argparse.Namespace) -> list[float]:
    if variant == "tuned":
        from pipeline.allocator import keep_freed_memory

        keep_freed_memory()
    import torch
    import torch.nn.functional as F

    from stages.train.losses import segmentation_loss
    from stages.train.model import pspnet
    from stages.train.model.student import Student, StudentConfig

    if variant == "reference":  # PyTorch's bilinear kernel in training too
        pspnet._upsample = lambda x, size, training: F.interpolate(x, size, mode="bilinear", align_corners=True)
    torch.manual_seed(0)
    model = Student(StudentConfig(depth=args.depth, feature_channels=0, width=args.width))
    model = model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    image = torch.randn(args.batch, 3, args.size, args.size).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 20, (args.batch, args.size, args.size))
    weight = torch.rand(20) + 0.5
    times = []
    for i in range(args.warmup + args.repeats):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(image)
        logits, aux = out.logits.float(), out.aux_logits.float()
        if variant == "reference":
            loss = (F.cross_entropy(logits.contiguous(), labels, weight=weight, ignore_index=255)
                    + 0.4 * F.cross_entropy(aux.contiguous(), labels, weight=weight, ignore_index=255))
        else:
            loss = segmentation_loss(logits, labels, aux, 0.4, weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=18)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=97)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--child", choices=["tuned", "reference"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args)))
        return
    times: dict[str, list[float]] = {"reference": [], "tuned": []}
    for _ in range(args.rounds):
        for variant in times:
            env = {**os.environ, "DISTILL_CACHE_MALLOC": "default" if variant == "reference" else "tuned"}
            cmd = [sys.executable, "-m", "bench.bench_student_step", "--child", variant,
                   *[a for k, v in vars(args).items() if k not in ("child", "rounds")
                     for a in (f"--{k}", str(v))]]
            out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=True).stdout
            times[variant] += json.loads(out.strip().splitlines()[-1])
    ref, tuned = statistics.median(times["reference"]), statistics.median(times["tuned"])
    print(json.dumps({"bench": "student_step", "depth": args.depth, "width": args.width, "batch": args.batch,
                      "size": args.size, "steps": len(times["tuned"]), "reference_step_s": round(ref, 5),
                      "tuned_step_s": round(tuned, 5), "speedup": round(ref / tuned, 3), "target": TARGET,
                      "meets_target": ref / tuned >= TARGET}))


if __name__ == "__main__":
    main()
