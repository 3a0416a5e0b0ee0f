"""Tables (mean ± std over seeds) and the Markdown report of `make reproduce` (see pipeline/reproduce.py)."""

from __future__ import annotations

import math
from pathlib import Path

# Table layouts: (row label, run name, evaluation set); evaluation sets as in pipeline.reproduce.EVAL_SETS
TABLE2 = [("PSPNet (baseline)", "baseline"), ("Multitask (depth from cached cells)", "multitask"),
          ("Ours: paired 3D-to-2D distillation (DN)", "paired")]
TABLE7 = [  # columns: A val (paired training), NYU test (A-trained, generalization †), NYU test (unpaired *)
    ("PSPNet (baseline)", "baseline", "nyu-baseline"),
    ("Ours w/ BN", "paired-bn", "unpaired-bn"),
    ("Ours w/ DN", "paired", "unpaired"),
    ("Ours w/ DN, one shared discriminator (no SAAL)", None, "unpaired-shared"),
]
TABLE8 = [("PSPNet (baseline)", "baseline"), ("Multitask", "multitask"), ("Ours (paired, DN)", "paired"),
          ("Ours (paired, BN)", "paired-bn")]


def stats(values: list[float]) -> dict:
    """mean and sample std (n-1; 0 for one value) of the finite values, with the values themselves."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return {"mean": float("nan"), "std": float("nan"), "n": 0, "values": list(values)}
    mean = sum(v) / len(v)
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return {"mean": mean, "std": std, "n": len(v), "values": v}


def _metric(results: dict, run: str | None, where: str, key: str = "miou") -> dict:
    if run is None:
        return stats([])
    per_seed = results.get(run, {})
    return stats([rec["eval"][where].get(key) for rec in per_seed.values() if where in rec.get("eval", {})])


def summarize(results: dict[str, dict[str, dict]], runs) -> dict:
    """The four tables as JSON: rows of {label, run, <column>: {mean, std, n, values}}."""
    t2 = [{"label": lab, "run": r, **{k: _metric(results, r, "A", k) for k in ("miou", "macc", "pixel_accuracy")}}
          for lab, r in TABLE2]
    t7 = [{"label": lab, "paired_run": p, "unpaired_run": u, "A_val_miou": _metric(results, p, "A"),
           "nyu_generalization_miou": _metric(results, p, "nyu"), "nyu_unpaired_miou": _metric(results, u, "nyu")}
          for lab, p, u in TABLE7]
    t8 = [{"label": lab, "run": r, "A_val_miou": _metric(results, r, "A"), "B_val_miou": _metric(results, r, "B"),
           "nyu_test_miou": _metric(results, r, "nyu")} for lab, r in TABLE8]
    probe = []
    for lab, r in (("PSPNet (baseline)", "baseline"), ("Ours (paired, DN)", "paired")):
        recs = [rec["depth_probe"] for rec in results.get(r, {}).values() if "depth_probe" in rec]
        probe.append({"label": lab, "run": r, "ssim": stats([x["ssim"] for x in recs]),
                      "rmse_m": stats([x["rmse_m"] for x in recs])})
    return {"table2": t2, "table7": t7, "table8": t8, "depth_ssim": probe}


def fmt(s: dict, scale: float = 100.0, digits: int = 2) -> str:
    if not s or s.get("n", 0) == 0:
        return "—"
    return f"{scale * s['mean']:.{digits}f} ± {scale * s['std']:.{digits}f}"


def write_report(out: Path, doc: dict) -> Path:
    cfg, t, hw = doc["config"], doc["tables"], doc["hardware"]
    seeds = ", ".join(str(s) for s in doc["seeds"])
    n = len(doc["seeds"])
    lines = ["# distill-cache: synthetic reproduction of the paper's tables", "",
             f"Preset **{cfg['preset']}**, student seeds {seeds} (n = {n}); every cell is mean ± sample std over "
             "the seeds, in % (SSIM: ×100). The worlds and the 3D teacher are fixed (world seed "
             f"{cfg['world_seed']}, NYU world seed {cfg['nyu_world_seed']}); only the students' seeds vary. "
             "Numbers are reported as they came out, with no tuning on any evaluation split.", ""]
    if cfg["preset"] == "smoke":
        lines += ["> **smoke preset**: a few iterations on a handful of tiny frames, to check the pipeline end to "
                  "end. These numbers say nothing about the method.", ""]
    lines += ["## Table 2 — baseline vs. Multitask vs. paired 3D-to-2D distillation (world A, validation split)", "",
              "| method | mIoU | mAcc | pixel acc |", "|---|---|---|---|"]
    lines += [f"| {r['label']} | {fmt(r['miou'])} | {fmt(r['macc'])} | {fmt(r['pixel_accuracy'])} |"
              for r in t["table2"]]
    lines += ["", "## Table 7 — DN vs. BN; SAAL vs. one shared discriminator (mIoU)", "",
              "Columns: world A val (paired training on A); NYU world test, A-trained († generalization); NYU world "
              "test, unpaired training (* 2D images and labels from the NYU world's train split, 3D features from "
              "world A's cache; the baseline row is PSPNet trained on the NYU world's images alone).", "",
              "| method | world A | NYU † | NYU * |", "|---|---|---|---|"]
    lines += [f"| {r['label']} | {fmt(r['A_val_miou'])} | {fmt(r['nyu_generalization_miou'])} | "
              f"{fmt(r['nyu_unpaired_miou'])} |" for r in t["table7"]]
    lines += ["", "## Table 8 — cross-domain generalization of A-trained students (mIoU)", "",
              "World B = world A's geometry and labels in appearance style b (pure appearance shift); NYU world = "
              "other rooms, style b, NYU-v2 format (the paper's ScanNet → NYU-v2 setting).", "",
              "| method | A val (in domain) | B val (style b) | NYU test |", "|---|---|---|---|"]
    lines += [f"| {r['label']} | {fmt(r['A_val_miou'])} | {fmt(r['B_val_miou'])} | {fmt(r['nyu_test_miou'])} |"
              for r in t["table8"]]
    lines += ["", f"## §4.5 — depth from frozen `{cfg['probe_layer']}` features (SSIM on world A val)", "",
              f"A decoder (3×3 conv 128 + BN + ReLU, 3×3 conv 64 + BN + ReLU, 1×1 conv) reads the student's frozen "
              f"stride-8 `{cfg['probe_layer']}` map (the paper's res-block-4) and is trained for {cfg['probe_iters']}"
              f" iterations (Adam, lr {cfg['probe_lr']}, masked L1) on world A's train cache. Target: the cached "
              "per-cell camera depth of the 3D point in each covered 8×8 cell (the cache holds no dense depth map), "
              "divided by 10 m. SSIM: Gaussian window 7, σ 1.5, L = 1, local statistics mask-weighted over covered "
              "cells.", "", "| student features | SSIM ×100 | RMSE (m) |", "|---|---|---|"]
    lines += [f"| {r['label']} | {fmt(r['ssim'])} | {fmt(r['rmse_m'], 1.0, 3)} |" for r in t["depth_ssim"]]
    teacher = doc.get("teacher") or {}
    if teacher:
        val = teacher.get("val") or {}
        loss = (teacher.get("history") or [{}])[-1].get("loss")
        lines += ["", "## 3D teacher (its quality bounds what distillation can transfer)", "",
                  f"{teacher.get('config', {}).get('architecture', '?')}, {teacher.get('epochs', '?')} epochs, "
                  f"{teacher.get('max_points', '?')} points per crop, {len(teacher.get('train_scenes', []))} training "
                  f"scenes; last epoch loss {loss if loss is None else round(loss, 3)}; 3D mIoU on world A's "
                  f"validation scenes {fmt(stats([val.get('miou')]), digits=1).split(' ±')[0]} %, point accuracy "
                  f"{fmt(stats([val.get('accuracy')]), digits=1).split(' ±')[0]} %."]
    lines += ["", "## Configuration", "", "| key | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in cfg.items()]
    lines += ["", "## Hardware", "", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in hw.items()]
    lines += ["", "## Wall time per step (seconds; 'reused' = made by an earlier invocation)", "",
              "| step | seconds | |", "|---|---|---|"]
    lines += [f"| {s['name']} | {s['seconds']:.1f} | {'reused' if s['reused'] else ''} |" for s in doc["steps"]]
    total = sum(s["seconds"] for s in doc["steps"] if math.isfinite(s["seconds"]))
    lines += ["", f"Sum of step times: {total / 60:.1f} min; this invocation: "
              f"{doc['wall_seconds_this_invocation'] / 60:.1f} min.", "",
              "## Commands", "", "```"] + [s["command"] for s in doc["steps"] if s["command"]] + ["```", "",
              "## Re-running", "",
              f"`python -m pipeline.reproduce --out {out} --preset {cfg['preset']} --seeds {seeds.replace(' ', '')}`"
              " reuses every finished step (worlds, teacher, caches, students, evaluations, probes); more seeds only "
              "train the new students. A different configuration is refused in the same folder.", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report
