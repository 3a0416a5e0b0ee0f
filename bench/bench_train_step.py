"""Training-step cost of the distilled (paired) student vs the PSPNet baseline on the same backbone, and the
deployed student's inference cost with vs without the distillation branch.

    python bench/bench_train_step.py                       # CPU: ResNet-50, batch 2, 233x233
    python bench/bench_train_step.py --device cuda --batch 8 --size 473 --amp bf16

One step = forward, the mode's loss (L_s + 0.4 aux, + 0.03 L_p on 15 % covered cells for paired), backward and an
SGD update with the trainer's parameter groups: what `Trainer.step` runs, minus data loading. Prints one JSON line;
the target is paired/baseline step-time ratio <= 1.10.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import nullcontext

import torch

from stages.train.batch import Batch
from stages.train.config import load_config
from stages.train.losses import LossWeights, paired_objective, segmentation_loss
from stages.train.model.student import Student, StudentConfig
from stages.train.trainer import head_parameter_groups


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_batch(b: int, size: int, channels: int, classes: int, device: torch.device, coverage: float = 0.15) -> Batch:
    g = -(-size // 8)
    gen = torch.Generator().manual_seed(0)
    mask = torch.rand(b, g, g, generator=gen) < coverage
    return Batch(image=torch.randn(b, 3, size, size, generator=gen),
                 labels=torch.randint(0, classes, (b, size, size), generator=gen),
                 features=torch.randn(b, channels, g, g, generator=gen) * mask.unsqueeze(1),
                 feature_mask=mask, feature_labels=torch.randint(0, classes, (b, g, g), generator=gen),
                 depth=torch.rand(b, g, g, generator=gen) * 5, index=torch.arange(b)).to(device)


def time_steps(model: Student, batch: Batch, paired: bool, device: torch.device, amp: torch.dtype | None,
               warmup: int, repeats: int) -> list[float]:
    cfg = load_config()
    opt = torch.optim.SGD(head_parameter_groups(model, cfg), lr=0.01, momentum=0.9, weight_decay=1e-4)
    weights = LossWeights()
    model.train()
    times = []
    for i in range(warmup + repeats):
        sync(device)
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=amp) if amp else nullcontext():
            out = model(batch.image)
        if paired:
            loss = paired_objective(out, batch, weights).total
        else:
            loss = segmentation_loss(out.logits.float(), batch.labels, out.aux_logits.float(), weights.aux)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return times


@torch.no_grad()
def time_inference(model: Student, image: torch.Tensor, device: torch.device, warmup: int, repeats: int) -> float:
    model.eval()
    times = []
    for i in range(warmup + repeats):
        sync(device)
        t = time.perf_counter()
        model(image)
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--depth", type=int, default=50)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--size", type=int, default=233)
    ap.add_argument("--channels", type=int, default=96, help="C3D, the cache's feature channels")
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave as is)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    amp = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    torch.manual_seed(0)
    baseline = Student(StudentConfig(depth=args.depth, num_classes=args.classes, feature_channels=0)).to(device)
    paired = Student(StudentConfig(depth=args.depth, num_classes=args.classes,
                                   feature_channels=args.channels)).to(device)
    paired.set_target_stats(torch.zeros(args.channels), torch.ones(args.channels))
    paired.pspnet.backbone.load_state_dict(baseline.pspnet.backbone.state_dict())  # the same backbone
    batch = make_batch(args.batch, args.size, args.channels, args.classes, device)
    # interleave the two measurements so that machine noise hits both alike
    tb, tp = [], []
    for _ in range(2):
        tb += time_steps(baseline, batch, False, device, amp, args.warmup, args.repeats)
        tp += time_steps(paired, batch, True, device, amp, args.warmup, args.repeats)
    mb, mp = statistics.median(tb), statistics.median(tp)
    cost = paired.cost((args.size, args.size))
    image = batch.image[:1]
    inf_with = time_inference(paired, image, device, args.warmup, args.repeats)
    inf_without = time_inference(baseline, image, device, args.warmup, args.repeats)
    print(json.dumps({
        "bench": "train_step", "device": str(device), "torch_threads": torch.get_num_threads(), "depth": args.depth,
        "batch": args.batch, "size": args.size, "channels": args.channels, "amp": args.amp,
        "repeats": len(tb), "baseline_step_s": round(mb, 4), "paired_step_s": round(mp, 4),
        "ratio": round(mp / mb, 4), "target_ratio": 1.10, "meets_target": mp / mb <= 1.10,
        "inference": {"image": [1, 3, args.size, args.size],
                      "params_with_branch": cost.params, "params_without_branch": cost.params_without_branch,
                      "params_ratio": round(cost.params / cost.params_without_branch, 4),
                      "gmacs_with_branch": round(cost.macs / 1e9, 3),
                      "gmacs_without_branch": round(cost.macs_without_branch / 1e9, 3),
                      "time_with_branch_s": round(inf_with, 4), "time_without_branch_s": round(inf_without, 4),
                      "time_ratio": round(inf_with / inf_without, 4)}}))


if __name__ == "__main__":
    main()
