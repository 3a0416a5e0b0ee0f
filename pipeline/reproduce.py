"""`make reproduce`: synthetic analogues of the paper's Tables 2, 7, 8 and §4.5, over several student seeds.

Worlds (generated once, seeds fixed; only the students' seeds vary):
- world A: ScanNet-format, style a — the teacher is trained on its train split, caches of its train/val splits;
- world B: ScanNet-format, the same world seed in style b — the same geometry and labels with another look;
  only its validation split is extracted, to evaluate A-trained students under a pure appearance shift (Table 8);
- the NYU world: NYU-v2-format, another world seed, style b, ingested 2D-only — the unpaired 2D images of
  Table 7 (its train split) and the NYU-v2 evaluation (its test split).

Students (per seed), all through `distill-cache train` / `evaluate`:
- on A's cache: baseline, multitask, paired (DN), paired (BN) → evaluated on A val, B val and the NYU test split;
  the label-embedding control, the student's architecture options, and baseline/paired with the paper's
  unweighted L_s (the recipe weights it by class) → A val (and B val);
- on the NYU 2D cache: baseline, unpaired (DN, per-class discriminators = SAAL), unpaired (BN, per-class),
  unpaired (DN, one shared discriminator), with A's train cache as the 3D feature source → the NYU test split.
§4.5: a small depth decoder on frozen "res-block-4" (layer4, stride 8) features of the baseline and the paired
student, trained on A's cached per-cell depths (train split), scored by SSIM on A's validation cells.

Every step whose output exists is reused, so an interrupted run resumes. Results: OUT/results.json, OUT/report.md.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.recipe import CpuRecipe, StudentRecipe, TeacherRecipe, WorldRecipe, reproduction_recipe, smoke_recipe

# ---------------------------------------------------------------------------------------------------------------
# configuration


@dataclass
class ReproduceConfig:
    """World A's sizes, the teacher and the students come from ``recipe`` (`pipeline.recipe`, shared with `make
    demo`); the NYU world, the seeds of the worlds and the §4.5 probe are the reproduction's own."""

    preset: str = "cpu"
    recipe: CpuRecipe = field(default_factory=reproduction_recipe)
    nyu_scenes: int = 8
    nyu_frames: int = 16
    nyu_size: str = "320x240"
    world_seed: int = 0
    nyu_world_seed: int = 1  # other geometry than A: NYU-v2 is not ScanNet's rooms either
    device: str = "cpu"
    probe_layer: str = "layer4"  # "res-block-4" as the paper's Figure 7 / 12
    probe_iters: int = 150
    probe_batch: int = 4
    probe_lr: float = 1e-3


def _gpu_recipe() -> CpuRecipe:
    """Paper-like sizes on one GPU: Res16UNet34C at 2 cm, PSPNet-50 at 473 crops, batch 16, SGD 0.01."""
    return CpuRecipe(
        world=WorldRecipe(scenes=24, frames=60, size="640x480", teacher_rooms=400),
        teacher=TeacherRecipe(architecture="Res16UNet34C", voxel_size=0.02, point_head=False, steps=6000,
                              max_points=200000,
                              processes=1, class_weights="none", geometric_augment=True, color_augment=True,
                              eval_every=500),
        student=StudentRecipe(depth=50, width=1.0, iters=6000, batch_size=16, crop=473, scale=(0.5, 2.0),
                              optimizer="sgd", lr=0.01, warmup=0, weight_decay=1e-4, head_lr_mult=10.0,
                              class_weights="none", workers=4, eval_scale=1.0))


PRESETS: dict[str, ReproduceConfig] = {
    # tiny: the test suite's end-to-end check; the numbers mean nothing at this size
    "smoke": ReproduceConfig(preset="smoke", recipe=smoke_recipe(), nyu_scenes=2, nyu_frames=6, nyu_size="96x72",
                             probe_iters=5, probe_batch=2),
    # the default: the demo's recipe with a teacher trained 3x as long, every table, 3 seeds (~2 h 40 min on 2 cores)
    "cpu": ReproduceConfig(preset="cpu"),
    # paper-like student sizes on one GPU
    "gpu": ReproduceConfig(preset="gpu", recipe=_gpu_recipe(), nyu_scenes=24, nyu_frames=40, nyu_size="640x480",
                           device="cuda", probe_iters=3000, probe_batch=16),
}


@dataclass(frozen=True)
class StudentRun:
    """One student configuration of the tables."""

    name: str
    data: str  # "A" (world A's cache), "A-le" (world A, label-embedding teacher) or "nyu" (the NYU world's 2D cache)
    flags: tuple[str, ...]
    evals: tuple[str, ...]  # evaluation sets: "A" (A val), "B" (B val), "nyu" (NYU test)
    label: str
    recipe_overrides: tuple[str, ...] = ()  # flags placed after the recipe's, to replace one of its settings


RUNS: tuple[StudentRun, ...] = (
    StudentRun("baseline", "A", ("--mode", "baseline"), ("A", "B", "nyu"), "PSPNet (baseline)"),
    StudentRun("multitask", "A", ("--mode", "multitask"), ("A", "B", "nyu"), "Multitask (depth)"),
    StudentRun("paired", "A", ("--mode", "paired", "--norm", "dn"), ("A", "B", "nyu"), "Ours, paired (DN)"),
    StudentRun("paired-bn", "A", ("--mode", "paired", "--norm", "bn"), ("A", "B", "nyu"), "Ours, paired (BN)"),
    # the control: a teacher that knows the labels and nothing of the geometry (its cache of its own)
    StudentRun("paired-label-embedding", "A-le", ("--mode", "paired", "--norm", "dn"), ("A", "B"),
               "Control: paired on a label-embedding teacher"),
    # the architecture options of the paper's student (each measured against the default, `paired`)
    StudentRun("paired-linear-fusion", "A", ("--mode", "paired", "--set", "model.fusion=linear"), ("A",),
               "paired, no Conv3 (f3d_sim reaches the classifier linearly)"),
    StudentRun("paired-branch-ppm", "A", ("--mode", "paired", "--set", "model.branch_input=ppm"), ("A",),
               "paired, the branch reads the pyramid-pooling output (the release)"),
    StudentRun("paired-conv2-linear", "A", ("--mode", "paired", "--set", "model.conv2_relu=false"), ("A",),
               "paired, Conv2 without its ReLU"),
    # the recipe's sqrt-inverse class weights (tuned for the baseline) against the paper's unweighted L_s: both
    # reweight the rare classes the teacher's features also carry, so the paired gain is measured without them too
    StudentRun("baseline-unweighted", "A", ("--mode", "baseline"), ("A", "B"),
               "PSPNet (baseline), the paper's unweighted L_s", ("--set", "loss.class_weights=none")),
    StudentRun("paired-unweighted", "A", ("--mode", "paired", "--norm", "dn"), ("A", "B"),
               "Ours, paired (DN), the paper's unweighted L_s", ("--set", "loss.class_weights=none")),
    StudentRun("nyu-baseline", "nyu", ("--mode", "baseline"), ("nyu",), "PSPNet (baseline)"),
    StudentRun("unpaired", "nyu", ("--mode", "unpaired", "--norm", "dn", "--disc", "per-class"), ("nyu",),
               "Ours, unpaired (DN, SAAL)"),
    StudentRun("unpaired-bn", "nyu", ("--mode", "unpaired", "--norm", "bn", "--disc", "per-class"), ("nyu",),
               "Ours, unpaired (BN, SAAL)"),
    StudentRun("unpaired-shared", "nyu", ("--mode", "unpaired", "--norm", "dn", "--disc", "shared"), ("nyu",),
               "Ours, unpaired (DN, one shared discriminator)"),
)
PROBED = ("baseline", "paired")  # §4.5
EVAL_SETS = {"A": "cache-A-val", "B": "cache-B-val", "nyu": "cache-nyu-test"}
METRICS = ("miou", "macc", "pixel_accuracy")
DEPTH_RANGE = 10.0  # metres: depth is divided by this (and clipped) so SSIM's dynamic range L is 1


# ---------------------------------------------------------------------------------------------------------------
# §4.5: SSIM and the depth decoder


def gaussian_window(size: int = 7, sigma: float = 1.5) -> torch.Tensor:
    ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(ax**2) / (2 * sigma**2))
    w = torch.outer(g, g)
    return (w / w.sum()).float()


def ssim(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None, *, data_range: float = 1.0,
         window: int = 7, sigma: float = 1.5, min_cells: int = 4) -> torch.Tensor:
    """Mean SSIM (Wang et al. 2004, Gaussian window) of (B, 1, H, W) images, one value per image.

    With ``mask`` (B, 1, H, W) the local statistics are mask-weighted (normalized convolution): the cached depth is
    known only at covered cells (5-30 % of them with the paper's pixel sampling). The same weighting handles the
    border, so no padding value leaks in. A pixel counts when it is valid and its window holds at least ``min_cells``
    valid pixels (fewer give no variance estimate worth the name). NaN for an image without such a pixel.
    """
    if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"ssim expects two (B, 1, H, W) tensors, got {tuple(x.shape)} and {tuple(y.shape)}")
    m = torch.ones_like(x) if mask is None else mask.to(x.dtype)
    w = gaussian_window(window, sigma).to(x)[None, None]

    def filt(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, w, padding=window // 2)

    support = filt(m)
    denom = support.clamp_min(1e-8)
    mx, my = filt(m * x) / denom, filt(m * y) / denom
    sxx = filt(m * x * x) / denom - mx**2
    syy = filt(m * y * y) / denom - my**2
    sxy = filt(m * x * y) / denom - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    smap = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    cells = F.conv2d(m, torch.ones_like(w), padding=window // 2)
    valid = (m > 0) & (cells >= min_cells - 0.5)
    count = valid.flatten(1).sum(1)
    out = (smap * valid).flatten(1).sum(1) / count.clamp_min(1)
    return torch.where(count > 0, out, torch.full_like(out, float("nan")))


class DepthDecoder(nn.Module):
    """A few convolutions from frozen stride-8 features to one channel of depth at the same grid."""

    def __init__(self, in_channels: int, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden // 2, 3, padding=1, bias=False), nn.BatchNorm2d(hidden // 2),
            nn.ReLU(inplace=True), nn.Conv2d(hidden // 2, 1, 1))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.net(f)


def frozen_features(student, image: torch.Tensor, layer: str) -> torch.Tensor:
    with torch.no_grad():
        if layer in ("layer3", "layer4"):
            l3, l4 = student.pspnet.backbone(image)
            return l3 if layer == "layer3" else l4
        if layer == "f2d":
            return student.pspnet.encode(image).f2d
    raise ValueError(f"unknown probe layer {layer!r} (layer3 | layer4 | f2d)")


def depth_probe(checkpoint: Path, train_cache: Path, val_cache: Path, cfg: ReproduceConfig, seed: int) -> dict:
    """Train a DepthDecoder on the frozen ``cfg.probe_layer`` features of a student; SSIM on the validation cells.

    Target: the cache's per-cell camera depth (metres) of the 3D point that landed in each stride-8 cell — the
    depth the teacher's features were projected with; the frame's dense depth map is not in the cache. Loss and
    SSIM are restricted to covered cells.
    """
    from cache_schema import open_cache
    from stages.train.checkpoint import load_checkpoint
    from stages.train.loader import CacheLoader, LoaderConfig
    from stages.train.predict.deployed import load_student
    from stages.train.trainer import resolve_device

    torch.manual_seed(seed)
    device = resolve_device(cfg.device)
    student = load_student(load_checkpoint(checkpoint, map_location="cpu"), device)
    for p in student.parameters():
        p.requires_grad_(False)
    decoder: DepthDecoder | None = None
    opt = None
    train_reader = open_cache(train_cache)
    st = cfg.recipe.student
    lcfg = LoaderConfig(batch_size=cfg.probe_batch, crop=st.crop, scale=st.scale, workers=st.workers, seed=seed)
    it = 0
    losses: list[float] = []
    with CacheLoader(train_reader, lcfg, device=device) as loader:
        if len(loader) == 0:
            raise RuntimeError(f"{train_cache}: fewer frames than one depth-probe batch ({cfg.probe_batch})")
        while it < cfg.probe_iters:
            for b in loader:
                f = frozen_features(student, b.image, cfg.probe_layer)
                if decoder is None:
                    decoder = DepthDecoder(f.shape[1]).to(device)
                    opt = torch.optim.Adam(decoder.parameters(), lr=cfg.probe_lr)
                pred = _to_grid(decoder(f), b.depth.shape[-2:])
                m = b.feature_mask & (b.depth > 0)
                if not bool(m.any()):
                    continue
                target = (b.depth / DEPTH_RANGE).clamp(0, 1)
                loss = (pred[:, 0] - target).abs()[m].mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(float(loss))
                it += 1
                if it >= cfg.probe_iters:
                    break
    if decoder is None:
        raise RuntimeError(f"{train_cache}: the depth probe saw no batch")
    decoder.eval()
    scores, sq, n = [], 0.0, 0
    with CacheLoader(open_cache(val_cache), LoaderConfig(batch_size=cfg.probe_batch, train=False,
                                                         drop_last=False, workers=st.workers,
                                                         image_size=eval_size(cfg)),
                     device=device) as loader, torch.no_grad():
        for b in loader:
            pred = _to_grid(decoder(frozen_features(student, b.image, cfg.probe_layer)), b.depth.shape[-2:])
            m = (b.feature_mask & (b.depth > 0))[:, None]
            target = (b.depth / DEPTH_RANGE).clamp(0, 1)[:, None]
            s = ssim(pred.clamp(0, 1), target, m)
            scores += [v for v in s.tolist() if not math.isnan(v)]
            sq += float((((pred - target) * DEPTH_RANGE) ** 2)[m].sum())
            n += int(m.sum())
    if not scores:
        raise RuntimeError(f"{val_cache}: no validation frame has a covered cell: SSIM is undefined")
    return {"ssim": sum(scores) / len(scores), "rmse_m": math.sqrt(sq / max(n, 1)), "frames": len(scores),
            "cells": n, "layer": cfg.probe_layer, "iters": it,
            "final_train_l1_m": DEPTH_RANGE * sum(losses[-20:]) / max(len(losses[-20:]), 1)}


def eval_size(cfg: ReproduceConfig) -> tuple[int, int] | None:
    """(H, W) at which world A's frames are evaluated: the recipe's evaluation scale of its image size."""
    w, h = (int(v) for v in cfg.recipe.world.size.split("x"))
    s = cfg.recipe.student.eval_scale
    return None if s == 1.0 else (round(h * s), round(w * s))


def _to_grid(pred: torch.Tensor, hw) -> torch.Tensor:
    if tuple(pred.shape[-2:]) == tuple(hw):
        return pred
    return F.interpolate(pred, tuple(hw), mode="bilinear", align_corners=False)


# ---------------------------------------------------------------------------------------------------------------
# the driver


@dataclass
class StepRecord:
    name: str
    seconds: float
    reused: bool = False
    command: str = ""


class Reproduce:
    def __init__(self, cfg: ReproduceConfig, out: Path, seeds: list[int], runs: list[str] | None = None):
        self.cfg, self.out, self.seeds = cfg, out, seeds
        unknown = sorted(set(runs or ()) - {r.name for r in RUNS})
        if unknown:
            raise SystemExit(f"unknown runs: {', '.join(unknown)} (known: {', '.join(r.name for r in RUNS)})")
        # a subset trains only those students; the tables show the others as missing (a later run adds them)
        self.runs = tuple(r for r in RUNS if runs is None or r.name in runs)
        self.dc = [sys.executable, "-m", "pipeline.cli"]
        self.steps: list[StepRecord] = []
        self.timings_path = out / "timings.json"  # seconds of finished steps survive a resumed run
        self.timings: dict[str, float] = {}

    # -- helpers --

    def cli(self, name: str, *args: str) -> str:
        line = self.line(*args)
        print(f"\n=== {name}\n$ {line}", flush=True)
        t = time.perf_counter()
        proc = subprocess.run([*self.dc, *args], stdout=subprocess.PIPE, text=True)
        seconds = time.perf_counter() - t
        if proc.returncode != 0:
            raise SystemExit(f"reproduce step '{name}' failed (exit {proc.returncode}): {line}\n"
                             f"{proc.stdout[-4000:]}")
        self._record(StepRecord(name, seconds, command=line))
        return proc.stdout

    def reused(self, name: str, command: str = "") -> None:
        """A step whose output exists; its command is still listed, so the report tells how it was made."""
        print(f"=== {name} (reused)", flush=True)
        self.steps.append(StepRecord(name, self.timings.get(name, float("nan")), reused=True, command=command))

    @staticmethod
    def line(*args: str) -> str:
        return "distill-cache " + shlex.join(args)

    def _record(self, step: StepRecord) -> None:
        self.steps.append(step)
        self.timings[step.name] = step.seconds
        self.timings_path.write_text(json.dumps(self.timings, indent=1))

    def _check_config(self) -> None:
        path = self.out / "config.json"
        # the seeds may grow between runs; everything else must match what the outputs were made with
        mine = json.loads(json.dumps(asdict(self.cfg)))  # tuples as lists, as read back
        if path.exists():
            old = json.loads(path.read_text())
            if old != mine:
                diff = sorted(k for k in set(old) | set(mine) if old.get(k) != mine.get(k))
                raise SystemExit(f"{self.out} holds a reproduction made with another configuration ({', '.join(diff)}"
                                 f" differ): use another --out, or delete {self.out}")
        path.write_text(json.dumps(mine, indent=1))

    # -- steps --

    def synth(self, name: str, root: Path, args: list[str]) -> None:
        """A synthetic world (`synth` args), reused once its completion marker exists."""
        if (root / ".complete").exists():
            self.reused(name, self.line(*args))
            return
        self.cli(name, *args)
        (root / ".complete").write_text("ok\n")

    def extract(self, name: str, cache: Path, *args: str) -> None:
        done = cache.parent / f"{cache.name}.done"
        args = ("extract", "--out", str(cache), "--quiet", *args)
        if done.exists():
            self.reused(name, self.line(*args))
            return
        self.cli(name, *args)
        done.write_text("ok\n")

    def train(self, run: StudentRun, seed: int, caches: dict[str, Path]) -> Path:
        c = self.cfg
        rdir = self.out / "students" / f"{run.name}-s{seed}"
        name = f"train {run.name} seed {seed}"
        args = ["train", "--out", str(rdir), *run.flags, *c.recipe.student.train_args(), *run.recipe_overrides,
                "--seed", str(seed), "--device", c.device, "--quiet", "--json"]
        if run.data in ("A", "A-le"):
            args += ["--cache", str(caches["A-train" if run.data == "A" else "A-train-le"])]
        else:
            args += ["--cache", str(caches["nyu-train"])]
            if "unpaired" in run.flags:
                args += ["--feature-cache", str(caches["A-train"])]
        if (rdir / "last.pt").exists() and (rdir / "done").exists():
            self.reused(name, self.line(*args))
            return rdir
        if (rdir / "last.pt").exists():
            args.append("--resume")  # an interrupted run continues exactly
        self.cli(name, *args)
        (rdir / "done").write_text("ok\n")
        return rdir

    def evaluate(self, run: StudentRun, seed: int, rdir: Path, where: str, caches: dict[str, Path]) -> dict:
        path = rdir / f"eval-{where}.json"
        name = f"evaluate {run.name} seed {seed} on {where}"
        # cross-dataset evaluation (A-trained on the NYU world) is a deliberate domain shift, as the paper's Table 8
        force = (run.data in ("A", "A-le")) != (where in ("A", "B"))
        # the control was trained on a cache of another teacher; evaluation reads only images and labels
        force = force or run.data == "A-le"
        line = (f"distill-cache evaluate --checkpoint {rdir / 'last.pt'} --cache {caches[where]} --json "
                f"--scales {self.cfg.recipe.student.eval_scale}{' --force' if force else ''}")
        if path.exists() and path.stat().st_mtime >= (rdir / "last.pt").stat().st_mtime:
            self.reused(name, line)
            return json.loads(path.read_text())
        from stages.train.evaluate import EvalConfig, evaluate

        print(f"\n=== {name}\n$ {line}  (in-process: the command's own function; saves a start-up per evaluation)",
              flush=True)
        t = time.perf_counter()
        # `evaluate --json` prints exactly EvalResult.to_json()
        result = evaluate(rdir / "last.pt", caches[where], EvalConfig(scales=(self.cfg.recipe.student.eval_scale,),
                                                                     workers=self.cfg.recipe.student.workers,
                                                                     device=self.cfg.device),
                          force=force, progress=False, echo=lambda m: print(m, flush=True)).to_json()
        self._record(StepRecord(name, time.perf_counter() - t, command=line))
        print(f"mIoU {result['miou']:.4f}  mAcc {result['macc']:.4f}  pixel acc {result['pixel_accuracy']:.4f}")
        path.write_text(json.dumps(result, indent=1))
        return result

    def probe(self, run: StudentRun, seed: int, rdir: Path, caches: dict[str, Path]) -> dict:
        path = rdir / f"depth-probe-{self.cfg.probe_layer}.json"
        name = f"depth probe {run.name} seed {seed}"
        if path.exists() and path.stat().st_mtime >= (rdir / "last.pt").stat().st_mtime:
            self.reused(name, f"(in-process) depth_probe({rdir.name})")
            return json.loads(path.read_text())
        print(f"\n=== {name}", flush=True)
        t = time.perf_counter()
        result = depth_probe(rdir / "last.pt", caches["A-train"], caches["A"], self.cfg, seed)
        self._record(StepRecord(name, time.perf_counter() - t, command=f"(in-process) depth_probe({rdir.name})"))
        path.write_text(json.dumps(result, indent=1))
        print(json.dumps(result), flush=True)
        return result

    def main(self) -> Path:
        from pipeline.reproduce_report import progress, summarize, write_report
        from stages.extract.teacher.checkpoint import sidecar_path

        c, out = self.cfg, self.out
        out.mkdir(parents=True, exist_ok=True)
        self._check_config()
        if self.timings_path.exists():
            self.timings = json.loads(self.timings_path.read_text())
        t_all = time.perf_counter()
        w = c.recipe.world
        world_a, world_b, world_n = out / "world-A", out / "world-B", out / "world-nyu"
        rooms = out / "rooms3d"
        self.synth("world A (ScanNet format, style a)", world_a, w.synth_args(str(world_a), c.world_seed, "a"))
        self.synth("world B (world A's geometry, style b)", world_b, w.synth_args(str(world_b), c.world_seed, "b"))
        self.synth("NYU world (NYU-v2 format, other geometry, style b)", world_n,
                   ["synth", "nyu", str(world_n), "--scenes", str(c.nyu_scenes), "--frames", str(c.nyu_frames),
                    "--seed", str(c.nyu_world_seed), "--size", c.nyu_size, "--style", "b", "--quiet"])
        self.synth("3D repository (rooms without frames, for the teacher)", rooms,
                   w.rooms_args(str(rooms), c.world_seed))
        teacher = out / "teacher.pth"
        train_split, val_split = world_a / "scannetv2_train.txt", world_a / "scannetv2_val.txt"
        teacher_args = ("train-teacher", "--dataset", "scannet", "--root", str(world_a), "--out", str(teacher),
                        "--split-file", str(train_split), "--val-split-file", str(val_split), "--extra-root",
                        str(rooms), *c.recipe.teacher.args(), "--seed", str(c.world_seed), "--device", c.device,
                        "--quiet")
        if teacher.exists() and sidecar_path(teacher).exists():
            self.reused("3D teacher", self.line(*teacher_args))
        else:
            self.cli("3D teacher", *teacher_args)
        caches = {"A-train": out / "cache-A-train", "A-train-le": out / "cache-A-train-label-embedding",
                  "A": out / EVAL_SETS["A"], "B": out / EVAL_SETS["B"],
                  "nyu-train": out / "cache-nyu-train", "nyu": out / EVAL_SETS["nyu"]}
        common = ["--teacher-checkpoint", str(teacher), "--device", c.device]
        self.extract("extract A train", caches["A-train"], "--dataset", "scannet", "--root", str(world_a),
                     "--split-file", str(train_split), *common)
        channels = teacher_channels(teacher)
        self.extract("extract A train, label-embedding teacher (the control)", caches["A-train-le"], "--dataset",
                     "scannet", "--root", str(world_a), "--split-file", str(train_split), "--teacher",
                     "label-embedding", "--embedding-channels", str(channels))
        self.extract("extract A val", caches["A"], "--dataset", "scannet", "--root", str(world_a), "--split-file",
                     str(val_split), *common)
        self.extract("extract B val", caches["B"], "--dataset", "scannet", "--root", str(world_b), "--split-file",
                     str(world_b / "scannetv2_val.txt"), *common)
        self.extract("ingest NYU train (2D only)", caches["nyu-train"], "--dataset", "nyu", "--root", str(world_n),
                     "--nyu-split", "train")
        self.extract("ingest NYU test (2D only)", caches["nyu"], "--dataset", "nyu", "--root", str(world_n),
                     "--nyu-split", "test")

        results: dict[str, dict[str, dict]] = {r.name: {} for r in RUNS}
        for seed in self.seeds:
            for run in self.runs:
                rdir = self.train(run, seed, caches)
                rec: dict = {"eval": {}, "train_seconds": self.timings.get(f"train {run.name} seed {seed}")}
                for where in run.evals:
                    r = self.evaluate(run, seed, rdir, where, caches)
                    rec["eval"][where] = {k: r[k] for k in (*METRICS, "frames") if k in r}
                    rec["eval"][where]["classes"] = {n: v.get("iou") for n, v in r.get("classes", {}).items()}
                if run.name in PROBED:
                    rec["depth_probe"] = self.probe(run, seed, rdir, caches)
                rec["train_log"] = train_log_summary(rdir / "log.csv")
                results[run.name][str(seed)] = rec
        teacher_info: dict = {}
        sidecar = sidecar_path(teacher)
        if sidecar.exists():
            teacher_info = json.loads(sidecar.read_text())
        variance = feature_variance(caches["A-train"])
        doc = {"config": asdict(c), "recipe_args": {"teacher": c.recipe.teacher.args(),
                                                     "student": c.recipe.student.train_args()},
               "seeds": self.seeds, "runs_trained": [r.name for r in self.runs],
               "hardware": hardware(c.device), "teacher": teacher_info,
               "feature_variance": variance, "progress": progress(results, variance.get("total", float("nan"))),
               "runs": {r.name: {"label": r.label, "data": r.data, "flags": list(r.flags), "seeds": results[r.name]}
                        for r in RUNS},
               "tables": summarize(results, RUNS), "steps": [asdict(s) for s in self.steps],
               "wall_seconds_this_invocation": time.perf_counter() - t_all}
        (out / "results.json").write_text(json.dumps(doc, indent=1, allow_nan=True))
        report = write_report(out, doc)
        print(f"\nreport: {report}\nresults: {out / 'results.json'}")
        return report


def teacher_channels(teacher: Path) -> int:
    """Feature channels of the trained teacher's cached layer (block8), from its sidecar's architecture: the
    label-embedding control gets as many."""
    from stages.extract.teacher.checkpoint import sidecar_path
    from stages.extract.teacher.network import ARCHITECTURES

    arch = json.loads(sidecar_path(teacher).read_text())["config"]["architecture"]
    return ARCHITECTURES[arch].planes[-1]


def train_log_summary(path: Path, tail: float = 0.25) -> dict:
    """Loss terms from a student's log.csv: the first logged row and the mean over the last `tail` of the rows
    (single batches are noisy). {} when there is no log."""
    import csv

    if not path.exists():
        return {}
    with path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("iter", "").isdigit()]
    if not rows:
        return {}
    last = rows[-max(1, math.ceil(len(rows) * tail)):]
    out: dict = {"iters": int(rows[-1]["iter"])}
    for key in ("seg", "paired", "depth", "adv_g", "adv_d"):
        vals = [float(r[key]) for r in rows if r.get(key) not in (None, "")]
        if vals:
            end = [float(r[key]) for r in last if r.get(key) not in (None, "")]
            out[key] = {"first": vals[0], "end": sum(end) / len(end) if end else float("nan")}
    return out


def feature_variance(cache: Path) -> dict:
    """How the teacher features' variance splits on a cache: `total` = Σ over channels of the per-channel variance
    over all covered cells (the L_p of a student that predicts the global mean everywhere, so 1 − L_p / total is the
    share f3d_sim explains), and `class_explained` = the share a perfect per-class mean (by the 3D point's label)
    would explain: how much of the teacher's signal is semantic. Streams per scene; {} without features."""
    from cache_schema.reader import open_cache

    try:
        reader = open_cache(cache)
        per_class: dict[int, tuple] = {}  # label -> (cells, Σ features, Σ squares); the totals are their sums
        for name in reader.complete_scenes():
            sc = reader.scene(name)
            blk = sc.read_block(0, sc.num_frames)
            f = np.asarray(blk.features, np.float64)
            labels = np.asarray(blk.point_labels)
            for k in np.unique(labels) if f.size else ():
                fk = f[labels == k]
                n, a, b = per_class.get(int(k), (0, 0.0, 0.0))
                per_class[int(k)] = (n + len(fk), a + fk.sum(0), b + float((fk * fk).sum()))
    except Exception:  # noqa: BLE001 - a diagnostic: no features or no statistics means no row, never no report
        return {}
    n_all = sum(n for n, _, _ in per_class.values())
    if not n_all:
        return {}
    s1 = sum(a for _, a, _ in per_class.values())
    s2 = sum(b for _, _, b in per_class.values())
    total = (s2 - float((s1 * s1).sum()) / n_all) / n_all
    within = sum(b - float((a * a).sum()) / n for n, a, b in per_class.values()) / n_all
    return {"total": total, "class_explained": 1.0 - within / total if total > 0 else float("nan"), "cells": n_all}


def hardware(device: str) -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": device}
    with contextlib.suppress(ValueError, OSError, AttributeError):
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def parse_args(argv: list[str] | None = None) -> tuple[ReproduceConfig, Path, list[int], list[str] | None]:
    """The command line as (configuration, output folder, student seeds, runs or None for all)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/reproduce"), help="output folder (resumed if present)")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu",
                    help="smoke: tiny (tests); cpu: the demo's recipe with a 3x longer teacher, ~2 h 40 min on 2 "
                    "cores (default); gpu: paper-like sizes, --device cuda")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated student seeds (default 0,1,2)")
    ap.add_argument("--runs", help="comma-separated student runs to train (default: all of "
                    + ", ".join(r.name for r in RUNS) + "); the tables show the others as missing")
    ap.add_argument("--iters", type=int, help="override the preset's student iterations")
    ap.add_argument("--device", help="override the preset's device (cpu, cuda, cuda:1)")
    ap.add_argument("--world-seed", type=int,
                    help="seed of world A (default 0), which world B restyles and whose teacher's 3D repository "
                    "takes this + 1000: the same claims on another world of the generator (the NYU world keeps "
                    "seed 1, or takes 2 where A's is 1)")
    a = ap.parse_args(argv)
    try:
        seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--seeds must be comma-separated integers, got {a.seeds!r}")
    if not seeds:
        ap.error("--seeds is empty")
    cfg = copy.deepcopy(PRESETS[a.preset])
    if a.iters:
        cfg.recipe.student.iters = a.iters
    if a.device:
        cfg.device = a.device
    if a.world_seed is not None:
        cfg.world_seed = a.world_seed
        if cfg.nyu_world_seed == a.world_seed:  # the unpaired images must come from other rooms than A's
            cfg.nyu_world_seed = a.world_seed + 1
    runs = [r.strip() for r in a.runs.split(",") if r.strip()] if a.runs else None
    return cfg, a.out, seeds, runs


def cli(argv: list[str] | None = None) -> Path:
    cfg, out, seeds, runs = parse_args(argv)
    return Reproduce(cfg, out, seeds, runs).main()


if __name__ == "__main__":
    cli()
