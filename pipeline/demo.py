"""`make demo`: the whole pipeline on a small synthetic world, through the same CLI a user runs.

synthetic ScanNet-format world -> 3D teacher trained on it -> stage-one caches (train / val scenes) ->
baseline and distilled students trained from the cache -> both evaluated -> runs/demo/report.md with pictures.
Every step is skipped when its output is already there and valid, so a second run only redoes what changed.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class DemoConfig:
    out: Path
    scenes: int = 30  # many rooms with few frames each: a teacher trained on 6 rooms did not generalize
    frames: int = 8
    size: str = "320x240"
    seed: int = 0
    teacher_epochs: int = 10
    teacher_points: int = 30000  # random crop per teacher step: keeps CPU training to minutes
    # a CPU-sized teacher: the paper's Res16UNet34C at 2 cm costs ~20 s per training step here, 14A at 5 cm ~1 s
    teacher_architecture: str = "Res16UNet14A"
    teacher_voxel_size: float = 0.05
    iters: int = 200
    batch_size: int = 4
    crop: int = 97
    depth: int = 18
    smoke: bool = False  # tiny sizes for the test suite

    def __post_init__(self) -> None:
        if self.smoke:
            self.scenes, self.frames, self.size = 3, 6, "96x72"
            self.teacher_epochs, self.iters, self.batch_size, self.crop = 1, 4, 2, 65

    def stamp(self) -> dict:
        """What the outputs depend on (not where they go)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "out"}


@dataclass
class Step:
    name: str
    seconds: float = 0.0
    skipped: bool = False
    commands: list[str] = field(default_factory=list)


class Demo:
    def __init__(self, cfg: DemoConfig):
        self.cfg = cfg
        self.steps: list[Step] = []
        self.dc = [sys.executable, "-m", "pipeline.cli"]

    def run_cli(self, step: Step, *args: str) -> str:
        cmd = [*self.dc, *args]
        step.commands.append("distill-cache " + shlex.join(args))
        print(f"\n$ distill-cache {shlex.join(args)}", flush=True)
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"demo step '{step.name}' failed (exit {proc.returncode}): distill-cache "
                             f"{shlex.join(args)}\n{proc.stdout[-4000:]}")
        print(proc.stdout[-3000:], end="", flush=True)
        return proc.stdout

    def check_stamp(self) -> None:
        """A second run reuses what is still valid: outputs made with another configuration (an older demo, other
        sizes) are not — the demo's own outputs in OUT are then removed and remade, and it says so."""
        out, path = self.cfg.out, self.cfg.out / "demo-config.json"
        mine = self.cfg.stamp()
        old = None
        if path.exists():
            try:
                old = json.loads(path.read_text())
            except ValueError:
                old = {}
        made = [p for p in (out / "world", out / "teacher.pth", out / "teacher.pth.json", *out.glob("cache-*"),
                            *out.glob("student-*")) if p.exists()]
        if made and old != mine:
            diff = sorted(k for k in set(old or {}) | set(mine) if (old or {}).get(k) != mine.get(k))
            print(f"{out}: outputs of another demo configuration ({', '.join(diff) or 'no record'} differ): "
                  "remaking them", flush=True)
            for p in made:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(mine, indent=1))

    def step(self, name: str, done: bool) -> Step:
        s = Step(name, skipped=done)
        self.steps.append(s)
        print(f"\n=== {name}{' (reused)' if done else ''} ===", flush=True)
        return s

    def main(self) -> Path:
        c, out = self.cfg, self.cfg.out
        out.mkdir(parents=True, exist_ok=True)
        world, teacher = out / "world", out / "teacher.pth"
        self.check_stamp()
        t_all = time.perf_counter()

        s = self.step("synthetic world", (world / ".complete").exists())
        if not s.skipped:
            t = time.perf_counter()
            self.run_cli(s, "synth", "scannet", str(world), "--scenes", str(c.scenes), "--frames", str(c.frames),
                         "--seed", str(c.seed), "--size", c.size)
            (world / ".complete").write_text("ok\n")
            s.seconds = time.perf_counter() - t
        train_split, val_split = world / "scannetv2_train.txt", world / "scannetv2_val.txt"

        s = self.step("3D teacher", teacher.exists())
        if not s.skipped:
            t = time.perf_counter()
            self.run_cli(s, "train-teacher", "--dataset", "scannet", "--root", str(world), "--out", str(teacher),
                         "--split-file", str(train_split), "--val-split-file", str(val_split),
                         "--epochs", str(c.teacher_epochs), "--max-points", str(c.teacher_points),
                         "--architecture", c.teacher_architecture, "--voxel-size", str(c.teacher_voxel_size),
                         "--seed", str(c.seed))
            s.seconds = time.perf_counter() - t

        caches = {}
        for split, f in (("train", train_split), ("val", val_split)):
            cache = out / f"cache-{split}"
            caches[split] = cache
            s = self.step(f"extract {split} cache", False)
            t = time.perf_counter()
            # extraction resumes by itself: complete scenes with the same fingerprint are kept
            self.run_cli(s, "extract", "--dataset", "scannet", "--root", str(world), "--out", str(cache),
                         "--split-file", str(f), "--teacher-checkpoint", str(teacher), "--quiet")
            s.seconds = time.perf_counter() - t

        results = {}
        for mode in ("baseline", "paired"):
            run = out / f"student-{mode}"
            s = self.step(f"train {mode} student", (run / "last.pt").exists())
            if not s.skipped:
                t = time.perf_counter()
                self.run_cli(s, "train", "--cache", str(caches["train"]), "--out", str(run), "--mode", mode,
                             "--iters", str(c.iters), "--batch-size", str(c.batch_size), "--crop", str(c.crop),
                             "--depth", str(c.depth), "--seed", str(c.seed), "--checkpoint-every", str(c.iters))
                s.seconds = time.perf_counter() - t
            s = self.step(f"evaluate {mode} student", False)
            t = time.perf_counter()
            pred_dir = run / "predictions"
            text = self.run_cli(s, "evaluate", "--checkpoint", str(run / "last.pt"), "--cache", str(caches["val"]),
                                "--json", "--save-predictions", str(pred_dir))
            results[mode] = json.loads(text[text.index("{"):])
            s.seconds = time.perf_counter() - t

        s = self.step("report", False)
        t = time.perf_counter()
        report = write_report(out, caches, results, self.steps, time.perf_counter() - t_all, teacher=teacher)
        s.seconds = time.perf_counter() - t
        print(f"\nreport: {report}")
        return report


def _read_log(run: Path) -> dict[str, list[float]]:
    path = run / "log.csv"
    cols: dict[str, list[float]] = {}
    if not path.exists():
        return cols
    with open(path) as f:
        for row in csv.DictReader(f):
            for k, v in row.items():
                with contextlib.suppress(TypeError, ValueError):
                    cols.setdefault(k, []).append(float(v))
    return cols


def write_report(out: Path, caches: dict[str, Path], results: dict[str, dict], steps: list[Step],
                 wall: float, teacher: Path | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from cache_schema import open_cache
    from pipeline.inspect_cache import render_coverage

    fig_dir = out / "figures"
    fig_dir.mkdir(exist_ok=True)
    # training curves
    plt.figure(figsize=(7, 3.5))
    for mode in results:
        log = _read_log(out / f"student-{mode}")
        key = "loss_seg" if "loss_seg" in log else ("loss" if "loss" in log else None)
        if key and "iter" in log:
            plt.plot(log["iter"], log[key], label=f"{mode} ({key})")
    plt.xlabel("iteration")
    plt.ylabel("segmentation loss")
    plt.legend()
    plt.tight_layout()
    plt.savefig(fig_dir / "curves.png", dpi=110)
    plt.close()
    # per-class IoU bars
    names = None
    plt.figure(figsize=(10, 3.8))
    width = 0.4
    for k, mode in enumerate(results):
        per = {name: c.get("iou") for name, c in results[mode].get("classes", {}).items()}
        names = names or list(per)
        vals = [per.get(n) if per.get(n) is not None else np.nan for n in names]
        plt.bar(np.arange(len(names)) + k * width, vals, width, label=f"{mode} (mIoU {results[mode]['miou']:.3f})")
    if names:
        plt.xticks(np.arange(len(names)) + width / 2, names, rotation=60, ha="right", fontsize=8)
    plt.ylabel("IoU")
    plt.legend()
    plt.tight_layout()
    plt.savefig(fig_dir / "per_class_iou.png", dpi=110)
    plt.close()
    # coverage overlays (Figure 9 of the paper) and prediction panels
    val = open_cache(caches["val"])
    scene = val.complete_scenes()[0]
    n = val.scene(scene).num_frames
    overlays = []
    for i, fi in enumerate(sorted({0, n // 2, n - 1})):
        img = render_coverage(val, scene, fi)
        p = fig_dir / f"coverage_{i}.png"
        plt.imsave(p, img)
        overlays.append(p)
    panel = _prediction_panel(out, val, scene, fig_dir)

    from stages.extract.teacher.checkpoint import sidecar_path

    arch, teacher_quality = "3D", ""
    sidecar = sidecar_path(teacher) if teacher is not None else None
    if sidecar is not None and sidecar.exists():
        info = json.loads(sidecar.read_text())
        arch = (info.get("config") or {}).get("architecture", arch)
        val = info.get("val") or {}
        if val.get("miou") is not None:
            teacher_quality = f" (3D mIoU {100 * val['miou']:.1f} % on the validation rooms)"
    lines = ["# distill-cache demo report", "",
             f"Synthetic ScanNet-format world, a {arch} teacher trained on it{teacher_quality}, stage-one caches, and "
             f"two PSPNet students trained from the cache. Wall time {wall / 60:.1f} min.", "",
             "One seed at this size does not separate the two students from seed-to-seed noise: `make reproduce` "
             "trains three seeds per method and says which of the paper's claims hold.", "",
             "## Results (validation scenes, ScanNet 2D benchmark semantics)", "",
             "| student | mIoU | mAcc | pixel acc |", "|---|---|---|---|"]
    for mode, r in results.items():
        lines.append(f"| {mode} | {r['miou']:.3f} | {r['macc']:.3f} | {r['pixel_accuracy']:.3f} |")
    lines += ["", "![training curves](figures/curves.png)", "", "![per-class IoU](figures/per_class_iou.png)", "",
              "## Predictions (image / ground truth / baseline / distilled)", ""]
    if panel:
        lines.append(f"![predictions](figures/{panel.name})")
    lines += ["", "## Cache coverage (cells coloured by a PCA of the cached 3D features, as Figure 9)", ""]
    lines += [f"![coverage](figures/{p.name})" for p in overlays]
    lines += ["", "## Steps", "", "| step | seconds | |", "|---|---|---|"]
    lines += [f"| {s.name} | {s.seconds:.1f} | {'reused' if s.skipped else ''} |" for s in steps]
    lines += ["", "## Commands it ran", "", "```"] + [c for s in steps for c in s.commands] + ["```", "",
              "## Going further", "",
              "- `make extract-scannet SCANNET_ROOT=/data/scannet CACHE=cache/ CHECKPOINT=teacher.pth` — real scans",
              "- `make train CACHE=cache/ RUN=runs/x TRAIN_FLAGS='--mode paired'` — the paper's setting",
              "- `distill-cache inspect cache/ --json` — what a cache holds", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report


def _prediction_panel(out: Path, cache, scene: str, fig_dir: Path) -> Path | None:
    """image | ground truth | baseline | distilled for the first validation frame, from saved predictions."""
    import cv2
    import numpy as np

    from cache_schema.image_codec import decode_image

    preds = []
    for mode in ("baseline", "paired"):
        found = sorted((out / f"student-{mode}" / "predictions").rglob("*.png"))
        if not found:
            return None
        preds.append(cv2.imread(str(found[0]), cv2.IMREAD_UNCHANGED))
    f = cache.scene(scene).read_frame(0)
    img = decode_image(f.image, f.image_size, cache.manifest.encoding.format)
    rng = np.random.default_rng(0)
    palette = rng.integers(40, 255, (256, 3)).astype(np.uint8)
    palette[0] = 0
    h, w = img.shape[:2]
    tiles = [img] + [palette[cv2.resize(m.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)]
                     for m in (f.labels, *preds)]
    p = fig_dir / "predictions.png"
    cv2.imwrite(str(p), np.concatenate(tiles, axis=1)[:, :, ::-1])
    return p


def cli() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/demo"))
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (what the test suite runs)")
    ap.add_argument("--iters", type=int)
    a = ap.parse_args()
    cfg = DemoConfig(out=a.out, smoke=a.smoke)
    if a.iters:
        cfg.iters = a.iters
    Demo(cfg).main()


if __name__ == "__main__":
    cli()
