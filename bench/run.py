"""`make bench`: run every benchmark script, collect their JSON lines into results.json and a Markdown table.

    python -m bench.run                          # full mode, CPU -> bench/results.json, table in bench/README.md
    python -m bench.run --quick                  # fewer repeats / smaller inputs: a fast pass
    python -m bench.run --device cuda            # GPU figures where a benchmark has --device, at the paper's sizes
    python -m bench.run --only projection,loader --out /tmp/bench
    python -m bench.run --smoke                  # tiny inputs: do the scripts still run? (figures mean nothing)

Each benchmark runs as its own subprocess (`python -m bench.bench_<name> ...`) so that one crash, hang or leaked
thread setting cannot spoil the others; a failed benchmark is recorded with its stderr tail. Results of
benchmarks not run this time are kept from an existing results.json in the output folder (unless --fresh), so
the table stays whole after an `--only` run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO / "bench"
START, END = "<!-- bench:results:start -->", "<!-- bench:results:end -->"
STDERR_TAIL = 3000  # characters of a failed benchmark's stderr kept in results.json


@dataclass(frozen=True)
class Benchmark:
    name: str
    module: str
    item: str  # the numbered item(s) it answers
    quick: tuple[str, ...]
    full: tuple[str, ...] = ()
    cuda: tuple[str, ...] | None = None  # with --device cuda (not --quick/--smoke): the GPU sizes, else `full`
    smoke: tuple[str, ...] | None = None  # --smoke: tiny inputs that only prove the script runs, else `quick`

    def args(self, mode: str, device: str) -> tuple[str, ...]:
        """The script's arguments for ``mode`` (full | quick | smoke) on ``device`` (``--device`` not included)."""
        if mode == "smoke":
            return self.quick if self.smoke is None else self.smoke
        if mode == "quick":
            return self.quick
        return self.cuda if device.startswith("cuda") and self.cuda is not None else self.full

    def source(self) -> Path:
        return REPO / (self.module.replace(".", "/") + ".py")

    def supports_device(self) -> bool:
        """Whether the script takes ``--device`` (read from its source: no import, no subprocess)."""
        try:
            return '"--device"' in self.source().read_text()
        except OSError:
            return False


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("projection", "bench.bench_projection", "1", ("--points", "100000", "--repeats", "5"),
              ("--points", "300000", "--repeats", "7")),
    Benchmark("extraction", "bench.bench_extraction", "2, 5",
              ("--scenes", "1", "--frames", "8", "--size", "640x480", "--backend", "auto", "--feature-dtype", "both"),
              ("--scenes", "2", "--frames", "20", "--size", "640x480", "--backend", "auto", "--feature-dtype", "both")),
    # on CUDA: 8 loader threads (half a 16-core GPU host) and the data-wait figure at the paper's training settings
    Benchmark("loader", "bench.bench_loader", "3", ("--frames", "64", "--runs", "5"),
              ("--frames", "200", "--runs", "7"),
              cuda=("--frames", "200", "--runs", "5", "--workers", "8", "--depth", "50", "--train-iters", "60",
                    "--amp", "bf16"),
              smoke=("--frames", "8", "--runs", "1", "--workers", "1", "--batch-size", "4", "--mode", "train",
                     "--gpu-path", "--depth", "18", "--train-iters", "2", "--train-batch", "2", "--train-crop", "65")),
    # on CUDA: the paper's step (PSPNet-50, batch 16, 473 crops, bf16)
    Benchmark("train_step", "bench.bench_train_step", "4", ("--warmup", "1", "--repeats", "3"),
              ("--warmup", "2", "--repeats", "5"),
              cuda=("--batch", "16", "--size", "473", "--amp", "bf16", "--warmup", "3", "--repeats", "10"),
              smoke=("--depth", "18", "--batch", "2", "--size", "65", "--amp", "bf16", "--warmup", "0",
                     "--repeats", "1")),
    # the CPU recipe's student step, tuned (matrix upsampling, row cross-entropy, allocator) vs PyTorch's plain ops
    Benchmark("student_step", "bench.bench_student_step", "13", ("--repeats", "10"), ("--repeats", "20"),
              smoke=("--batch", "2", "--size", "33", "--warmup", "0", "--repeats", "1", "--rounds", "1")),
    # on CUDA: a ScanNet-sized room (vertex spacing 3.5 cm: ~154k points) at the paper's 2 cm
    Benchmark("teacher", "bench.bench_teacher", "6", ("--spacing", "0.05", "--repeats", "3"),
              ("--spacing", "0.05", "--repeats", "5"), cuda=("--spacing", "0.035", "--repeats", "5"),
              smoke=("--spacing", "0.3", "--repeats", "1", "--backends", "torch", "--architecture", "Res16UNet14A")),
    Benchmark("remote", "bench.bench_remote", "extra", ("--frames", "48", "--repeats", "5"),
              ("--frames", "100", "--repeats", "7")),
    Benchmark("sens", "bench.bench_sens", "extra", ("--frames", "20", "--repeats", "5"),
              ("--frames", "50", "--repeats", "7")),
    Benchmark("predict", "bench.bench_predict", "extra", ("--images", "2", "--repeats", "3"),
              ("--images", "4", "--repeats", "5", "--multiscale-images", "2")),
)
BY_NAME = {b.name: b for b in BENCHMARKS}


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def parse_json_lines(text: str) -> list[dict]:
    """Every stdout line that is a JSON object (scripts may print other text too)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
    return out


@dataclass
class Finished:
    """How a command ended (see run_command)."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool


def run_command(cmd: list[str], timeout: float, *, cwd: Path = REPO, env: dict[str, str] | None = None) -> Finished:
    """Run ``cmd`` to completion or ``timeout`` seconds, capturing its output; never raises for the command's own
    failure. It gets its own process group, so that a timeout also ends the children it started (extraction spawns
    the CLI, the CLI dask workers)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    timed_out = False
    try:
        stdout, stderr = proc.communicate(timeout=max(timeout, 0.1))
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        stderr += f"\n[timed out after {timeout:.0f} s]"
    return Finished(proc.returncode, stdout, stderr, time.perf_counter() - t0, timed_out)


def run_benchmark(bench: Benchmark, quick: bool, device: str, timeout: float, *, smoke: bool = False) -> dict:
    """Run one benchmark script to completion; never raises for the script's own failure."""
    mode = "smoke" if smoke else "quick" if quick else "full"
    args = list(bench.args(mode, device))
    note = None
    if device != "cpu":
        if bench.supports_device():
            args += ["--device", device]
        else:
            note = f"{bench.module} has no --device option: CPU figures only"
    cmd = [sys.executable, "-m", bench.module, *args]
    entry: dict = {"status": "failed", "module": bench.module, "item": bench.item, "args": args,
                   "mode": mode, "device": device if note is None else "cpu", "started": now(), "results": []}
    if note:
        entry["note"] = note
    done = run_command(cmd, timeout)
    entry["wall_s"] = round(done.seconds, 1)
    entry["returncode"] = done.returncode
    entry["results"] = parse_json_lines(done.stdout)
    if done.returncode == 0 and entry["results"]:
        entry["status"] = "ok"
    else:
        tail = done.stderr.strip()[-STDERR_TAIL:] or "(no stderr)"
        if done.returncode == 0:
            tail = "exited 0 but printed no JSON line\n" + tail
        entry["stderr_tail"] = tail
    return entry


# ----------------------------------------------------------------------------------------------- table rows

def _si(x: float, unit: str = "") -> str:
    for div, p in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g} {p} {unit}".rstrip()
    return f"{x:.3g} {unit}".rstrip()


def _kb(n: float) -> str:
    return f"{n / 1000:.1f} KB"


def _s(x: float) -> str:
    return f"{x * 1000:.3g} ms" if x < 1 else f"{x:.3g} s"


def _x(r: float | None) -> str:
    if r is None:
        return "—"
    return f"{r:,.0f}×" if abs(r) >= 1000 else f"{r:.3g}×"


def _status(met: bool | None) -> str:
    return "—" if met is None else ("met" if met else "**missed**")


def row(item: str, measure: str, value: str, reference: str = "—", ratio: float | None = None,
        target: str = "—", met: bool | None = None, note: str = "", status: str | None = None) -> dict:
    return {"item": item, "measure": measure, "value": value, "reference": reference,
            "ratio": None if ratio is None else round(float(ratio), 4), "ratio_text": _x(ratio), "target": target,
            "status": status or _status(met), "note": note}


def rows_projection(results: list[dict]) -> list[dict]:
    r = results[0]
    out = []
    for size, m in r["sizes"].items():
        pix = m["pixel"]["points_per_s"]
        out.append(row("1", f"Projection {size}: z-buffer points/s per core", _si(pix, "pt/s"),
                       f"reference impl. {_si(m['reference_points_per_s'], 'pt/s')}", m["speedup_vs_reference"],
                       "≥ 20 M pt/s", bool(m["target_20M_per_core_met"]),
                       f"{r['points'] // 1000}k points; with depth check {_si(m['pixel+depth-check']['points_per_s'])}"
                       f", cell sampling {_si(m['cell']['points_per_s'])} pt/s"))
        out.append(row("1", f"Projection {size}: vs memory bandwidth", _si(pix, "pt/s"),
                       f"moving the arrays {_si(m['memory_move_points_per_s'], 'pt/s')}",
                       m["fraction_of_memory_bound"], "close to 1×", None,
                       "fraction of the copy-only bound (read points, write one int each)"))
    return out


def rows_extraction(results: list[dict]) -> list[dict]:
    out = []
    for r in results:  # one per feature encoding (float16 default, uint8 opt-in)
        dt = r.get("feature_dtype", "float16")
        paper = r["paper_layout_bytes_per_frame"]
        ratio = r["feature_content_ratio_paper_over_ours"]
        ours = paper["total"] / ratio
        bpf = r["bytes_per_frame"]
        arrays = ", ".join(f"{k} {_kb(v)}" for k, v in bpf.items() if k != "total")
        out += [row("2", f"Cache size ({dt} features): teacher content bytes/frame", _kb(ours),
                    f"paper layout {_kb(paper['total'])}", ratio, "≥ 10× smaller", bool(r["target_10x_met"]),
                    f"ratio = paper ÷ ours; {r['channels']} ch, {r['cells_per_frame']:.0f} covered cells/frame; "
                    f"paper: features .npy {_kb(paper['features_npy'])} + index map {_kb(paper['index_map_npy'])}"),
                row("2", f"Cache size ({dt} features): whole frame (incl. JPEG, labels)", _kb(bpf["total"]),
                    "budget 215 KB", bpf["total"] / 215_000, "≤ 215 KB", bool(r["budget_215KB_met"]),
                    f"by array: {arrays}")]
    r = results[0]
    total = r["seconds_per_scene_total"]
    what = f"{r['frames_per_scene']} frames {r['image_size']}, backend {r['backend']}"
    for part, sec in r["seconds_per_scene"].items():
        out.append(row("5", f"Extraction: {part} s/scene", _s(sec), f"scene total {_s(total)}",
                       sec / total if total else None, "—", None,
                       "share of the scene's time" + (" (dominant)" if part == r["dominant_part"] else "")))
    out.append(row("5", "Extraction: ScanNet 1,513 scans", f"{r['scannet_1513_scans_hours_at_this_rate']:.3g} h",
                   f"{3600 / total:.3g} scenes/h" if total else "—", None, "—", None,
                   f"at this rate, scenes of {what}; scales with frames per scene"))
    return out


def rows_loader(results: list[dict]) -> list[dict]:
    out = []
    for r in results:
        key = r.get("key") or str(r.get("mode", "?")).split(" ")[0]
        mode = "GPU path, host side" if key == "host" else key
        what = ("frames/s per core to the pinned batch (warp on device)" if key == "host"
                else "frames/s per core to a ready batch")
        extra = {k: v for k, v in r.items() if k.startswith("gpu_")}
        note = (f"{r.get('frames')} frames, batch {r.get('batch_size')}, {r.get('workers')} workers, "
                f"{r.get('mean_jpeg_kb')} KB JPEGs; per core ÷ {min(r.get('cores') or 1, r.get('workers') or 1)}")
        if extra:
            note += "; " + ", ".join(f"{k} {v}" for k, v in extra.items())
        prof = r.get("stage_ms_per_frame_1thread")
        if prof:
            stages = {k: v for k, v in prof.items() if k not in ("write-only floor", "ready-frame MB")}
            note += "; where a frame's time goes (1 thread, ms): " + ", ".join(
                f"{k} {v:.2f}" for k, v in stages.items())
            if "write-only floor" in prof:
                note += (f"; writing a ready frame's {prof['ready-frame MB']:.2f} MB alone takes "
                         f"{prof['write-only floor']:.2f} ms")
        out.append(row("3", f"Loader ({mode}): {what}", f"{r['loader_fps_per_core']:.4g}",
                       f"JPEG decode alone {r['decode_fps_per_core']:.4g}", r["ratio"], "≥ 0.8× decode",
                       r["ratio"] >= 0.8, note))
        if "data_wait_frac" in r:  # the --device cuda (or --gpu-path) measurement of the trainer itself
            wait = float(r["data_wait_frac"])
            out.append(row("3", f"Trainer data wait (paired, PSPNet-{r.get('train_depth')}, batch "
                                f"{r.get('train_batch')}, crop {r.get('train_crop')}, amp {r.get('train_amp')}, "
                                f"{r.get('device')})", f"{100 * wait:.2g} % of the step",
                           f"step {_s(float(r['step_time_s']))}", None, "< 5 %", wait < 0.05,
                           f"mean over the logged intervals after the first, {r.get('train_iters')} iterations, "
                           f"{r.get('workers')} loader threads; {r.get('frames_per_s_training')} frames/s trained; "
                           f"{r.get('gpu_batches_per_s')} batches/s delivered by the loader alone"))
    return out


def rows_train_step(results: list[dict]) -> list[dict]:
    r = results[0]
    inf = r["inference"]
    what = f"ResNet-{r['depth']}, batch {r['batch']}, {r['size']}², {r['device']}, amp {r['amp']}"
    return [row("4", "Training step: distilled vs baseline", _s(r["paired_step_s"]),
                f"baseline {_s(r['baseline_step_s'])}", r["ratio"], "≤ 1.10×", bool(r["meets_target"]),
                f"{what}, {r['repeats']} steps each, interleaved"),
            row("4", "Student inference: with vs without distillation branch", _s(inf["time_with_branch_s"]),
                f"without {_s(inf['time_without_branch_s'])}", inf["time_ratio"], "—", None,
                f"params {inf['params_ratio']}×, GMACs {inf['gmacs_with_branch']} vs {inf['gmacs_without_branch']}")]


def rows_student_step(results: list[dict]) -> list[dict]:
    r = results[0]
    return [row("13", "CPU student step: tuned vs PyTorch's plain ops", _s(r["tuned_step_s"]),
                f"plain {_s(r['reference_step_s'])}", r["speedup"], f"≥ {r['target']}×", bool(r["meets_target"]),
                f"ResNet-{r['depth']} ×{r['width']}, batch {r['batch']}, {r['size']}², bf16, {r['steps']} steps each, "
                "interleaved processes")]


def rows_teacher(results: list[dict]) -> list[dict]:
    r = results[0]
    ref = r.get("reference_backend")
    out = []
    for b, m in r["backends"].items():
        if m.get("status") != "ok":
            out.append(row("6", f"Teacher backend {b}", "—", status="unavailable", note=str(m.get("status"))))
            continue
        t_ref = r["backends"][ref]["seconds"]
        out.append(row("6", f"Teacher backend {b}: per-point features", f"{m['us_per_point']:.3g} µs/pt",
                       f"{ref} {1e6 * t_ref / r['points']:.3g} µs/pt", m["time_ratio_vs_reference"], "—", None,
                       f"{_s(m['seconds'])} for {r['points']} points ({r['voxels']} voxels), {r['device']}; "
                       f"max |Δ| vs {ref} {m['max_abs_diff_vs_reference']:.2g} (features up to "
                       f"{r['feature_abs_max']:.2g}); v{m['version']}"))
    return out


def rows_remote(results: list[dict]) -> list[dict]:
    r = results[0]
    return [row("extra", "Cache read over HTTP (loopback): frames/s", f"{r['http_frames_per_s']:.4g}",
                f"local dir {r['local_frames_per_s']:.4g}", r["http_over_local"], "—", None,
                f"{r['stored_kb_per_frame']} KB/frame stored, blocks of {r['block']}")]


def rows_sens(results: list[dict]) -> list[dict]:
    out = []
    for m in results[0]["results"]:
        out.append(row("extra", f"ScanNet .sens stream {m['size']}: frames/CPU-s", f"{m['stream_fps']['cpu']:.4g}",
                       f"imdecode alone {m['imdecode_fps']['cpu']:.4g}", m["stream_over_imdecode_cpu"], "—", None,
                       f"every 10th frame: {m['stream_skip10_fps']['cpu']:.4g} /CPU-s; depth decode "
                       f"{m['depth_decode_fps']['cpu']:.4g} /CPU-s"))
    return out


def rows_predict(results: list[dict]) -> list[dict]:
    r = results[0]
    ms = r["multiscale"]
    what = (f"PSPNet-{r['depth']} distilled student ({r['channels']} ch), {r['crop']}² sliding window "
            f"({r['windows_per_image']} windows/image), batch {r['batch']}, {r['threads']} threads")
    return [row("extra", f"Predict {r['size']} single scale: images/s, onnxruntime vs PyTorch (CPU)",
                f"{r['onnxruntime_images_per_s']:.3g} img/s", f"PyTorch {r['torch_images_per_s']:.3g} img/s",
                r["onnxruntime_over_torch"], "—", None,
                f"{what}; {r['images']} images × {r['repeats']} interleaved rounds; onnxruntime "
                f"{r['onnxruntime_version']}, logits within {r['max_rel_diff_onnx_vs_torch']:.1g} (relative)"),
            row("extra", f"Predict {r['size']}: multi-scale + flip cost (PyTorch)",
                _s(ms["seconds_per_image"]) + "/img", f"single scale {_s(ms['single_seconds_per_image'])}/img",
                ms["factor"], "—", None,
                f"scales {min(ms['scales']):g}-{max(ms['scales']):g} + flip (the release's protocol): "
                f"{ms['windows_per_image']} windows/image against {r['windows_per_image']}")]


ROWS: dict[str, Callable[[list[dict]], list[dict]]] = {
    "projection": rows_projection, "extraction": rows_extraction, "loader": rows_loader,
    "train_step": rows_train_step, "student_step": rows_student_step, "teacher": rows_teacher,
    "remote": rows_remote, "sens": rows_sens,
    "predict": rows_predict,
}


def rows_for(name: str, entry: dict) -> list[dict]:
    item = entry.get("item", "?")
    if entry.get("status") != "ok":
        last = [ln for ln in entry.get("stderr_tail", "").splitlines() if ln.strip()]
        return [row(item, f"{name}: benchmark failed", "—", status="failed",
                    note=(last[-1] if last else "no stderr")[:200])]
    try:
        rows = ROWS[name](entry["results"])
    except Exception as e:  # a script whose JSON changed shape: say so rather than lose the run
        return [row(item, f"{name}: results not understood", "—", status="failed",
                    note=f"{type(e).__name__}: {e} (raw JSON in results.json)")]
    if entry.get("note"):
        for r in rows:
            r["note"] = f"{r['note']}; {entry['note']}" if r["note"] else entry["note"]
    return rows


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_table(results: dict) -> str:
    m = results.get("machine", {})
    lines = [f"Measured {results.get('finished', '?')} on {m.get('cpu', '?')} ({m.get('cores', '?')} cores), "
             f"Python {m.get('python', '?')}, torch {m.get('torch', '?')}, GPU: {m.get('cuda') or 'none'}; "
             f"mode per benchmark: " + ", ".join(f"{k} {v.get('mode')}/{v.get('device')}"
                                                  for k, v in results.get("benchmarks", {}).items()) + ".",
             "",
             "| # | measure | value | reference | ratio | target | status | note |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results.get("rows", []):
        lines.append("| " + " | ".join(_cell(r[k]) for k in ("item", "measure", "value", "reference", "ratio_text",
                                                               "target", "status", "note")) + " |")
    return "\n".join(lines)


def update_readme(path: Path, table: str, template: Path | None = None) -> None:
    """Put ``table`` between the markers of ``path`` (hand-written text around them is kept).

    A missing ``path`` starts from ``template`` (the repository's bench/README.md), else a bare heading."""
    if path.exists():
        text = path.read_text()
    elif template is not None and template.exists():
        text = template.read_text()
    else:
        text = "# Benchmarks\n"
    block = f"{START}\n{table}\n{END}"
    if START in text and END in text and text.index(START) < text.index(END):
        head, rest = text.split(START, 1)
        tail = rest.split(END, 1)[1]
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n## Results\n\n" + block + "\n"
    path.write_text(text)


# -------------------------------------------------------------------------------------------------------- CLI

def select(only: str) -> list[Benchmark]:
    if not only:
        return list(BENCHMARKS)
    names = [n.strip().replace("-", "_") for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; choose from {', '.join(BY_NAME)}")
    return [BY_NAME[n] for n in names]


def machine_info() -> dict:
    from bench.common import machine

    info = machine()
    info["cores_available"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    info["platform"] = sys.platform
    return info


def write_outputs(results: dict, out_dir: Path) -> str:
    """results.json (atomically) and the README table in ``out_dir``; returns the table."""
    results["rows"] = [r for n, e in results["benchmarks"].items() for r in rows_for(n, e)]
    results_path = out_dir / "results.json"
    tmp = results_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    shutil.move(tmp, results_path)
    table = render_table(results)
    update_readme(out_dir / "README.md", table, template=BENCH_DIR / "README.md")
    return table


def render_only(out_dir: Path) -> int:
    path = out_dir / "results.json"
    if not path.exists():
        raise SystemExit(f"--render-only: no {path}; run the benchmarks first")
    print(write_outputs(json.loads(path.read_text()), out_dir))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0],
                                 epilog=", ".join(f"{b.name} (item {b.item})" for b in BENCHMARKS))
    ap.add_argument("--quick", action="store_true", help="fast pass: fewer repeats and smaller inputs")
    ap.add_argument("--smoke", action="store_true", help="tiny inputs: only checks that the scripts run (what "
                    "`make gpu-check --dry-run` uses); the figures mean nothing")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda: passed to the benchmarks that take --device")
    ap.add_argument("--only", default="", help="comma list of benchmarks to run (default: all)")
    ap.add_argument("--out", type=Path, default=BENCH_DIR, help="folder for results.json and README.md")
    ap.add_argument("--fresh", action="store_true", help="drop results of benchmarks not run this time")
    ap.add_argument("--timeout", type=float, default=0, help="seconds per benchmark (0: 900 quick, 3600 full)")
    ap.add_argument("--render-only", action="store_true",
                    help="run nothing: rebuild rows and the README table from OUT/results.json")
    a = ap.parse_args(argv)
    if a.render_only:
        return render_only(a.out)
    benches = select(a.only)
    if a.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise SystemExit(f"--device {a.device}: torch {torch.__version__} sees no CUDA device here")
    timeout = a.timeout or (900 if a.quick or a.smoke else 3600)
    out_dir: Path = a.out
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / "results.json"
    previous: dict = {}
    if results_path.exists() and not a.fresh:
        try:
            previous = json.loads(results_path.read_text()).get("benchmarks", {})
        except (json.JSONDecodeError, AttributeError):
            print(f"[bench.run] ignoring unreadable {results_path}", file=sys.stderr)
    started = now()
    from tqdm import tqdm

    done: dict[str, dict] = {}
    with tqdm(benches, desc="bench", unit="benchmark", file=sys.stderr) as bar:
        for b in bar:
            bar.set_postfix_str(b.name)
            done[b.name] = entry = run_benchmark(b, a.quick, a.device, timeout, smoke=a.smoke)
            bar.write(f"[bench.run] {b.name}: {entry['status']} in {entry['wall_s']} s", file=sys.stderr)
    benchmarks = {n: done.get(n) or previous[n] for n in BY_NAME if n in done or n in previous}
    results = {"schema": 1, "command": " ".join([os.path.basename(sys.executable), "-m", "bench.run",
                                                  *(argv if argv is not None else sys.argv[1:])]),
               "started": started, "finished": now(), "machine": machine_info(), "benchmarks": benchmarks}
    print(write_outputs(results, out_dir))
    failed = [n for n, e in done.items() if e["status"] != "ok"]
    if failed:
        print(f"[bench.run] failed: {', '.join(failed)} (stderr tails in {results_path})", file=sys.stderr)
        return 1  # everything is written; the exit status still tells `make` that something broke
    return 0


if __name__ == "__main__":
    sys.exit(main())
