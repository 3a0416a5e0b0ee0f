"""`make demo`: the whole pipeline on a small synthetic world, through the same CLI a user runs.

synthetic ScanNet-format world -> 3D teacher trained on it -> stage-one caches (train / val scenes) ->
baseline and distilled students trained from the cache -> both evaluated -> runs/demo/report.md with pictures.
Every step is skipped when its output is already there and valid, so a second run only redoes what changed.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.recipe import CpuRecipe, smoke_recipe


@dataclass
class DemoConfig:
    """Where the demo writes, its seed, and the recipe (`pipeline.recipe`, shared with `make reproduce`)."""

    out: Path
    seed: int = 0
    smoke: bool = False  # tiny sizes for the test suite
    recipe: CpuRecipe = field(default_factory=CpuRecipe)
    # the students' learning curves: iterations between scores on the validation cache (`train --val-cache`);
    # they do not change what a student learns, so they are not part of the stamp
    student_val_every: int = 500

    def __post_init__(self) -> None:
        if self.smoke:
            self.recipe = smoke_recipe()
            self.student_val_every = 2

    def stamp(self) -> dict:
        """What the outputs depend on (not where they go)."""
        return {"seed": self.seed, "smoke": self.smoke, **self.recipe.to_dict()}


@dataclass
class Step:
    name: str
    seconds: float = 0.0
    skipped: bool = False
    commands: list[str] = field(default_factory=list)


STUDENTS = ("baseline", "paired")


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
        mine = json.loads(json.dumps(self.cfg.stamp()))  # tuples as lists, as read back
        old = None
        if path.exists():
            try:
                old = json.loads(path.read_text())
            except ValueError:
                old = {}
        made = [p for p in (out / "world", out / "rooms3d", out / "teacher.pth", out / "teacher.pth.json",
                            *out.glob("cache-*"), *out.glob("student-*")) if p.exists()]
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

    def _synth(self, jobs: list[tuple[str, Path, list[str]]]) -> None:
        """The worlds, generated side by side (numpy only, one core each; no torch job runs meanwhile)."""
        running = []
        for name, root, args in jobs:
            s = self.step(name, (root / ".complete").exists())
            if s.skipped:
                continue
            if root.exists():  # an interrupted synth: start it again
                shutil.rmtree(root)
            s.commands.append("distill-cache " + shlex.join(args))
            print(f"$ distill-cache {shlex.join(args)}", flush=True)
            proc = subprocess.Popen([*self.dc, *args], stdout=subprocess.PIPE, text=True)
            running.append((s, root, proc, time.perf_counter()))
        for s, root, proc, t in running:
            out, _ = proc.communicate()
            if proc.returncode != 0:
                raise SystemExit(f"demo step '{s.name}' failed (exit {proc.returncode}): {s.commands[-1]}\n"
                                 f"{out[-4000:]}")
            print(out[-2000:], end="", flush=True)
            (root / ".complete").write_text("ok\n")
            s.seconds = time.perf_counter() - t

    def main(self) -> Path:
        c, out = self.cfg, self.cfg.out
        r = c.recipe
        out.mkdir(parents=True, exist_ok=True)
        world, rooms, teacher = out / "world", out / "rooms3d", out / "teacher.pth"
        self.check_stamp()
        t_all = time.perf_counter()

        self._synth([("synthetic world (rooms with frames)", world, r.world.synth_args(str(world), c.seed)),
                     ("3D repository (rooms without frames, for the teacher)", rooms,
                      r.world.rooms_args(str(rooms), c.seed))])
        train_split, val_split = world / "scannetv2_train.txt", world / "scannetv2_val.txt"

        s = self.step("3D teacher", teacher.exists() and sidecar_exists(teacher))
        if not s.skipped:
            t = time.perf_counter()
            self.run_cli(s, "train-teacher", "--dataset", "scannet", "--root", str(world), "--out", str(teacher),
                         "--split-file", str(train_split), "--val-split-file", str(val_split), "--extra-root",
                         str(rooms), *r.teacher.args(), "--seed", str(c.seed))
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

        results, seconds = {}, {}
        curve_args = ["--val-cache", str(caches["val"]), "--val-every", str(c.student_val_every),
                      "--set", f"log.val_scales=[{r.student.eval_scale}]"] if c.student_val_every else []
        for mode in STUDENTS:
            run = out / f"student-{mode}"
            s = self.step(f"train {mode} student", (run / "last.pt").exists())
            if not s.skipped:
                t = time.perf_counter()
                self.run_cli(s, "train", "--cache", str(caches["train"]), "--out", str(run), "--mode", mode,
                             *r.student.train_args(), "--seed", str(c.seed), *curve_args)
                s.seconds = time.perf_counter() - t
                (run / "demo-seconds.json").write_text(json.dumps({"seconds": round(s.seconds, 1)}))
            with contextlib.suppress(OSError, ValueError):
                seconds[mode] = json.loads((run / "demo-seconds.json").read_text())["seconds"]
            s = self.step(f"evaluate {mode} student", False)
            t = time.perf_counter()
            pred_dir = run / "predictions"
            text = self.run_cli(s, "evaluate", "--checkpoint", str(run / "last.pt"), "--cache", str(caches["val"]),
                                "--json", "--save-predictions", str(pred_dir), *r.student.eval_args())
            results[mode] = json.loads(text[text.index("{"):])
            s.seconds = time.perf_counter() - t

        s = self.step("report", False)
        t = time.perf_counter()
        report = write_report(out, caches, results, self.steps, time.perf_counter() - t_all, teacher=teacher,
                              cfg=c, student_seconds=seconds)
        s.seconds = time.perf_counter() - t
        print(f"\nreport: {report}")
        return report


def sidecar_exists(teacher: Path) -> bool:
    from stages.extract.teacher.checkpoint import sidecar_path

    return sidecar_path(teacher).exists()


def class_prior_miou(result: dict) -> float:
    """The mIoU of predicting the most frequent class everywhere, over the classes `evaluate` scored."""
    gt = {n: c["tp"] + c["fn"] for n, c in result["classes"].items()}
    scored = [n for n, c in result["classes"].items() if c["iou"] is not None]
    total = sum(gt.values())
    if not scored or total == 0:
        return float("nan")
    return max(gt.values()) / total / len(scored)


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


def _read_val_curve(run: Path) -> list[dict[str, float]]:
    """The student's validation curve (val.csv of `train --val-cache`, one row per score): iteration, mIoU, pixel
    accuracy. The trainer writes every field of these columns, so a row that lacks one is an error, not a gap."""
    path = run / "val.csv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [{"iter": int(float(r["iter"])), "miou": float(r["miou"]), "pixel_accuracy": float(r["pixel_accuracy"])}
                for r in csv.DictReader(f)]


def _teacher_info(teacher: Path | None) -> dict:
    from stages.extract.teacher.checkpoint import sidecar_path

    if teacher is None or not sidecar_path(teacher).exists():
        return {}
    return json.loads(sidecar_path(teacher).read_text())


def results_json(cfg: DemoConfig | None, teacher_info: dict, results: dict[str, dict], seconds: dict[str, float],
                 wall: float, curves: dict[str, list[dict]] | None = None) -> dict:
    """What `runs/demo/results.json` holds: the teacher's and each student's figures, and the configuration."""
    val = teacher_info.get("val") or {}
    students = {}
    for mode, r in results.items():
        students[mode] = {"miou": r["miou"], "macc": r["macc"], "pixel_accuracy": r["pixel_accuracy"],
                          "seconds": seconds.get(mode), "class_prior_miou": class_prior_miou(r),
                          "iou": {n: c["iou"] for n, c in r["classes"].items()},
                          "val_curve": (curves or {}).get(mode, [])}
    tcfg = teacher_info.get("config") or {}
    out = {"teacher": {"miou": val.get("miou"), "seconds": teacher_info.get("seconds"),
                       "wall_seconds": teacher_info.get("wall_seconds"),
                       "architecture": tcfg.get("architecture"), "voxel_size": tcfg.get("voxel_size"),
                       "input_features": tcfg.get("input_features", "color"),
                       "point_head": bool(tcfg.get("point_head", False)),
                       "train_scenes": len(teacher_info.get("train_scenes") or []),
                       "extra_scenes": teacher_info.get("extra_scenes"),
                       "val_scenes": len(teacher_info.get("val_scenes") or []),
                       "iou": val.get("iou"), "curve": teacher_info.get("curve")},
           "students": students, "wall_seconds": round(wall, 1)}
    if "baseline" in results and "paired" in results:
        out["paired_minus_baseline"] = results["paired"]["miou"] - results["baseline"]["miou"]
    if cfg is not None:
        out["config"] = cfg.stamp()
        out["protocol"] = {"evaluate": "ScanNet 2D benchmark semantics on the validation rooms' cached frames, "
                           f"single scale {cfg.recipe.student.eval_scale}, no flip", "seeds": [cfg.seed]}
    return out


def write_report(out: Path, caches: dict[str, Path], results: dict[str, dict], steps: list[Step],
                 wall: float, teacher: Path | None = None, cfg: DemoConfig | None = None,
                 student_seconds: dict[str, float] | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from cache_schema import open_cache
    from pipeline.inspect_cache import render_coverage

    fig_dir = out / "figures"
    fig_dir.mkdir(exist_ok=True)
    info = _teacher_info(teacher)
    curves = {mode: _read_val_curve(out / f"student-{mode}") for mode in results}
    summary = results_json(cfg, info, results, student_seconds or {}, wall, curves)
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    # the teacher's learning curve: validation 3D mIoU against training seconds
    curve = [c for c in info.get("curve") or [] if c.get("val_miou") is not None]
    plt.figure(figsize=(6, 3.4))
    if curve:
        plt.plot([c["seconds"] / 60 for c in curve], [100 * c["val_miou"] for c in curve], "o-")
        for c in curve[:: max(1, len(curve) // 4)] + curve[-1:]:
            plt.annotate(f"step {c['step']}", (c["seconds"] / 60, 100 * c["val_miou"]), fontsize=7,
                         textcoords="offset points", xytext=(4, -10))
    plt.xlabel("teacher training time (min)")
    plt.ylabel("validation 3D mIoU (%)")
    plt.grid(alpha=0.3)
    plt.tight_layout()
    plt.savefig(fig_dir / "teacher_curve.png", dpi=110)
    plt.close()
    # the students' curves: training loss, and validation mIoU where `train --val-cache` recorded it
    has_val = any(curves.values())
    fig, axes = plt.subplots(1, 2 if has_val else 1, figsize=(11 if has_val else 7, 3.5), squeeze=False)
    for mode in results:
        log = _read_log(out / f"student-{mode}")
        key = "seg" if "seg" in log else ("loss" if "loss" in log else None)
        if key and "iter" in log:
            axes[0, 0].plot(log["iter"], log[key], label=f"{mode} (segmentation loss)")
        if has_val and curves.get(mode):
            axes[0, 1].plot([c["iter"] for c in curves[mode]], [100 * c["miou"] for c in curves[mode]], "o-",
                            label=mode)
    axes[0, 0].set_xlabel("iteration")
    axes[0, 0].set_ylabel("segmentation loss")
    axes[0, 0].legend()
    if has_val:
        axes[0, 1].set_xlabel("iteration")
        axes[0, 1].set_ylabel("validation mIoU (%)")
        axes[0, 1].legend()
    fig.tight_layout()
    fig.savefig(fig_dir / "curves.png", dpi=110)
    plt.close(fig)
    # per-class IoU bars: the teacher (3D, points) and the students (2D, pixels)
    names = list(next(iter(results.values()))["classes"]) if results else []
    series = [(f"teacher 3D (mIoU {100 * summary['teacher']['miou']:.1f})", summary["teacher"]["iou"] or {})] \
        if summary["teacher"]["miou"] is not None else []
    series += [(f"{mode} (mIoU {100 * r['miou']:.1f})", {n: c["iou"] for n, c in r["classes"].items()})
               for mode, r in results.items()]
    plt.figure(figsize=(11, 4))
    width = 0.8 / max(1, len(series))
    for k, (label, per) in enumerate(series):
        vals = [100 * per[n] if per.get(n) is not None else np.nan for n in names]
        plt.bar(np.arange(len(names)) + k * width, vals, width, label=label)
    if names:
        plt.xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=60, ha="right", fontsize=8)
    plt.ylabel("IoU (%)")
    plt.legend(fontsize=8)
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

    t = summary["teacher"]
    arch = t["architecture"] or "3D"
    pct = lambda x: f"{100 * x:.1f}" if x is not None else "-"  # noqa: E731
    lines = ["# distill-cache demo report", "",
             f"A synthetic ScanNet-format world, a 3D teacher trained on it, stage-one caches, and two PSPNet "
             f"students trained from the cache alone. Wall time {wall / 60:.1f} min.", ""]
    if cfg is not None:
        st = cfg.recipe.student
        lines += [f"CPU recipe (`pipeline/recipe.py`, seed {cfg.seed}): teacher {arch} at "
                  f"{100 * (t['voxel_size'] or 0):.0f} cm (input: {t['input_features']}"
                  f"{', per-point head' if t.get('point_head') else ''}), "
                  f"{cfg.recipe.teacher.steps} steps on {t['train_scenes']} "
                  f"rooms ({t['extra_scenes']} of them 3D-only); students PSPNet-{st.depth} at width {st.width} "
                  f"(the paper's architecture, narrower), {st.iters} iterations of batch {st.batch_size}"
                  f"{' in ' + st.amp + ' autocast' if st.amp in ('bf16', 'fp16') else ''}, "
                  f"AdamW from scratch (world: {cfg.recipe.world.scenes} rooms × {cfg.recipe.world.frames} frames). "
                  f"The paper's sizes (Res16UNet34C at 2 cm, PSPNet-50 from ImageNet) stay the "
                  "defaults of `train-teacher` and `train` for real data.", ""]
    lines += ["## The 3D teacher", "",
              f"**{pct(t['miou'])} % 3D mIoU** on the {t['val_scenes']} validation rooms after "
              f"{(t['seconds'] or 0) / 60:.1f} min of training.", "",
              "![teacher learning curve](figures/teacher_curve.png)", "",
              "## The students (validation rooms, ScanNet 2D benchmark semantics)", "",
              "| student | mIoU | mAcc | pixel acc | training time |", "|---|---|---|---|---|"]
    for mode, r in summary["students"].items():
        secs = f"{r['seconds'] / 60:.1f} min" if r["seconds"] else "(reused)"
        lines.append(f"| {mode} | {pct(r['miou'])} | {pct(r['macc'])} | {pct(r['pixel_accuracy'])} | {secs} |")
    prior = next(iter(summary["students"].values()))["class_prior_miou"] if summary["students"] else float("nan")
    lines += ["", f"Predicting the most frequent class everywhere would score {pct(prior)} % mIoU (the class prior)."]
    learning = [f"{mode} " + " → ".join(pct(c["miou"]) for c in r["val_curve"]) + f" {_trend(r['val_curve'])}"
                for mode, r in summary["students"].items() if len(r["val_curve"]) >= 2]
    if learning:
        at = ", ".join(str(c["iter"]) for c in next(r for r in summary["students"].values() if r["val_curve"])[
            "val_curve"])
        lines += ["", f"Validation mIoU during training (iterations {at}; same protocol): " + "; ".join(learning)
                  + ". A curve still rising at the end means the budget, not the method, stops the student."]
    if "paired_minus_baseline" in summary:
        lines += ["", f"Paired − baseline: **{100 * summary['paired_minus_baseline']:+.1f} points** of mIoU, from "
                  "**one seed**: a single seed does not measure seed-to-seed noise, so this figure alone neither "
                  "confirms nor refutes the paper. The committed reproduction (`docs/results/report.md`, several "
                  "seeds, the difference with its standard error) does."]
    lines += ["", "![per-class IoU](figures/per_class_iou.png)", "", "![training curves](figures/curves.png)", "",
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
              "- `distill-cache inspect cache/ --json` — what a cache holds",
              "- `distill-cache predict --checkpoint runs/demo/student-paired/last.pt my_photos/ --out pred/` — "
              "the student on your own images", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report


def _trend(curve: list[dict]) -> str:
    """'(still rising)' when the last score gains more than a point on the one before, '(flat)' otherwise."""
    if len(curve) < 2:
        return ""
    gain = curve[-1]["miou"] - curve[-2]["miou"]
    return "(still rising)" if gain > 0.01 else "(falling)" if gain < -0.01 else "(flat)"


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
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--iters", type=int, help="student iterations (default: the recipe's)")
    a = ap.parse_args()
    cfg = DemoConfig(out=a.out, seed=a.seed, smoke=a.smoke)
    if a.iters:
        cfg.recipe.student.iters = a.iters
    Demo(cfg).main()


if __name__ == "__main__":
    cli()
