"""`make gpu-check`: every CUDA path checked and measured in one call on a lent GPU (started by scripts/gpu_check.sh).

    python -m bench.gpu_check --out OUT                  # on a GPU machine: the check, <= 7 min on one H100/H200
    python -m bench.gpu_check --dry-run --out OUT        # on the CPU: tiny sizes, the same steps and JSON shape
    python -m bench.gpu_check --steps train --out OUT    # rerun some steps only

Steps, in this order, each timed and recorded in OUT/gpu_check.json (rewritten after every step, so a run killed
from outside still leaves what it had); a step that fails or times out is recorded with its error tail and the
next one runs:

  tests    the CUDA-marked tests (the test files that carry `pytest.mark.cuda`), one result per test
  bench    `bench.run --device cuda` for loader, train_step and teacher at the GPU sizes (bench/run.py: batches/s
           delivered to the GPU, the trainer's data wait at PSPNet-50 / batch 16 / crop 473 / bf16, the step time,
           the teacher's seconds per ~154k-point room at 2 cm) -> OUT/bench/results.json and its table
  train    300 paired iterations at the paper's sizes on a synthetic cache of 640x480 frames with 96-channel
           features: log (OUT/train_log.csv), data wait, step time, peak GPU memory
  extract  `extract --workers 2 --device cuda` (dask workers pinned to GPUs) against the in-process run on the
           same synthetic world: the two caches must be equal

Each command has its own timeout and the whole check a time budget (a step that would start with less than
MIN_STEP_S left is skipped). `--dry-run` runs the same steps on the CPU with tiny sizes: the CUDA tests with the CPU
standing in for the device (conftest.CUDA_STANDIN), `bench.run --smoke`, a few training iterations; `make test`
runs it (tests/scripts/test_gpu_check.py), so none of this rots while no GPU is lent.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.run import BY_NAME, REPO, Finished, now, rows_for, run_benchmark, run_command, write_outputs

STEPS = ("tests", "bench", "train", "extract")
BENCHMARKS = ("loader", "train_step", "teacher")
MIN_STEP_S = 20.0  # a step is not started with less than this left of the budget
TAIL = 4000  # characters of a failed command's output kept in the JSON
CUDA_STANDIN = "DISTILL_CACHE_CUDA_STANDIN"  # tests/conftest.py: run CUDA-marked tests on the CPU

# The headline figures, always all present (null where a step did not produce them): the dry run and the GPU run
# write the same JSON shape.
FIGURES = (
    "tests_passed", "tests_failed", "tests_skipped",
    "loader_gpu_batches_per_s", "loader_gpu_frames_per_s", "loader_nvjpeg",
    "bench_data_wait_frac", "bench_train_step_s",
    "train_step_paired_s", "train_step_baseline_s", "train_step_ratio",
    "teacher_seconds_per_room", "teacher_points", "teacher_backend",
    "train_iterations", "train_data_wait_frac", "train_step_s", "train_frames_per_s", "train_final_loss",
    "train_peak_gpu_memory_mb",
    "extract_caches_equal", "extract_serial_s", "extract_workers_s",
)
TARGETS = {  # the targets, judged from the figures (null where the figure is missing)
    "data_wait_below_5_percent": ("train_data_wait_frac", lambda v: v < 0.05),
    "paired_step_within_1.10x_baseline": ("train_step_ratio", lambda v: v <= 1.10),
}


@dataclass(frozen=True)
class Plan:
    """Sizes and limits of one kind of run (GPU or dry run)."""

    device: str
    budget_s: float  # the whole check
    timeouts: dict[str, float]  # per command: tests, bench.<name>, train, extract (each of its commands)
    bench_mode: str  # bench.run's argument set: full (= the `cuda` sizes on a GPU) | smoke
    train_frames: int
    train_args: tuple[str, ...]
    world_args: tuple[str, ...]  # `synth scannet` of the extraction step
    extract_args: tuple[str, ...]


GPU = Plan(
    device="cuda", budget_s=420,
    timeouts={"tests": 150, "bench.loader": 150, "bench.train_step": 90, "bench.teacher": 90, "train": 180,
              "extract": 90},
    bench_mode="full", train_frames=160,
    train_args=("--iters", "300", "--batch-size", "16", "--crop", "473", "--depth", "50", "--amp", "bf16",
                "--workers", "8", "--set", "log.every=25"),
    world_args=("--scenes", "2", "--frames", "8", "--size", "640x480", "--vertex-spacing", "0.05"),
    extract_args=("--backend", "auto"))
DRY = Plan(
    device="cpu", budget_s=240,
    timeouts={"tests": 120, "bench.loader": 60, "bench.train_step": 60, "bench.teacher": 60, "train": 60,
              "extract": 60},
    bench_mode="smoke", train_frames=8,
    train_args=("--iters", "3", "--batch-size", "2", "--crop", "65", "--depth", "18", "--amp", "bf16",
                "--workers", "1", "--set", "log.every=1"),
    world_args=("--scenes", "2", "--frames", "2", "--size", "80x60", "--vertex-spacing", "0.15"),
    extract_args=("--backend", "torch", "--architecture", "Res16UNet14A", "--voxel-size", "0.1"))


class StepError(RuntimeError):
    """A step's own failure: its message, the output tail that explains it, whether a timeout ended it."""

    def __init__(self, message: str, tail: str = "", timed_out: bool = False):
        super().__init__(message)
        self.tail = tail
        self.timed_out = timed_out

    def record(self) -> dict:
        return {"status": "timeout" if self.timed_out else "failed", "error": str(self), "error_tail": self.tail}


@dataclass
class Check:
    """One run of the check: the report, its files, the clock."""

    plan: Plan
    out: Path
    work: Path
    python: str = sys.executable
    dry_run: bool = False
    started: float = field(default_factory=time.perf_counter)
    report: dict = field(default_factory=dict)

    # -- bookkeeping ------------------------------------------------------------------------------------------------

    @property
    def json_path(self) -> Path:
        return self.out / "gpu_check.json"

    @property
    def log_path(self) -> Path:
        return self.out / "gpu_check.log"

    def left(self) -> float:
        return self.plan.budget_s - (time.perf_counter() - self.started)

    def timeout(self, key: str) -> float:
        return max(1.0, min(self.plan.timeouts[key], self.left()))

    def log(self, text: str) -> None:
        with open(self.log_path, "a") as f:
            f.write(text if text.endswith("\n") else text + "\n")

    def write(self) -> None:
        self.report["wall_s"] = round(time.perf_counter() - self.started, 1)
        self.report["figures"] = figures(self.report.get("steps", {}))
        self.report["targets"] = {k: (None if self.report["figures"].get(f) is None else bool(ok(
            self.report["figures"][f]))) for k, (f, ok) in TARGETS.items()}
        tmp = self.json_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.report, indent=1, default=str) + "\n")
        tmp.replace(self.json_path)

    def env(self, **extra: str) -> dict[str, str]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra}
        if self.dry_run:
            env[CUDA_STANDIN] = "cpu"
        return env

    def command(self, key: str, cmd: list[str], *, env: dict[str, str] | None = None) -> Finished:
        """Run one command under the `key` timeout; its output goes to the log; a failure raises StepError."""
        limit = self.timeout(key)
        self.log(f"\n=== {key}: {' '.join(cmd)} (timeout {limit:.0f} s)")
        done = run_command(cmd, limit, env=env or self.env())
        self.log(done.stdout)
        self.log(done.stderr)
        self.log(f"=== {key}: exit {done.returncode} after {done.seconds:.1f} s")
        if done.timed_out:
            raise StepError(f"{key} timed out after {limit:.0f} s", _tail(done), timed_out=True)
        if done.returncode != 0:
            raise StepError(f"{key} exited {done.returncode}: {last_line(done.stderr) or last_line(done.stdout)}",
                            _tail(done))
        return done

    def run_step(self, name: str, fn: Callable[[Check], dict]) -> dict:
        """Run a step and record it; never raises."""
        steps = self.report.setdefault("steps", {})
        if self.left() < MIN_STEP_S:
            steps[name] = {"status": "skipped", "seconds": 0.0,
                           "error": f"time budget: {max(self.left(), 0):.0f} s of {self.plan.budget_s:.0f} s left"}
            self.write()
            return steps[name]
        print(f"[gpu-check] {name} ...", flush=True)
        t0 = time.perf_counter()
        entry: dict = {"status": "running", "started": now()}
        steps[name] = entry
        self.write()
        try:
            entry.update(fn(self))  # a step may set its own status ("failed") while still returning figures
            if entry["status"] == "running":
                entry["status"] = "ok"
        except StepError as e:
            entry.update(e.record())
        except Exception as e:  # a bug in the step itself: recorded like a failing command
            entry.update(status="failed", error=f"{type(e).__name__}: {e}",
                         error_tail=traceback.format_exc()[-TAIL:])
        entry["seconds"] = round(time.perf_counter() - t0, 1)
        self.log(f"=== step {name}: {entry['status']} in {entry['seconds']} s")
        print(f"[gpu-check] {name}: {entry['status']} in {entry['seconds']} s"
              + (f" ({entry['error']})" if entry.get("error") else ""), flush=True)
        self.write()
        return entry


def _tail(done: Finished) -> str:
    return (done.stdout.strip()[-TAIL // 2:] + "\n--- stderr ---\n" + done.stderr.strip()[-TAIL // 2:]).strip()


# ------------------------------------------------------------------------------------------------------ the steps

CUDA_MARK = re.compile(r"^\s*(pytestmark\s*=\s*pytest\.mark\.cuda|@pytest\.mark\.cuda)\b", re.MULTILINE)


def cuda_test_files(tests: Path = REPO / "tests") -> list[Path]:
    """The test files that mark tests `cuda` (a module's `pytestmark` or a test's decorator; read as text, since
    importing them here would need torch)."""
    return sorted(p for p in tests.rglob("test_*.py") if CUDA_MARK.search(p.read_text()))


def parse_junit(path: Path) -> list[dict]:
    """One record per test case of a pytest junit XML: name, outcome, seconds, message."""
    out = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = (node.get("message") or node.text or "").strip()[:500]
                break
        out.append({"name": f"{case.get('classname', '')}::{case.get('name', '')}", "outcome": outcome,
                    "seconds": round(float(case.get("time") or 0.0), 2), "message": message})
    return out


def step_tests(check: Check) -> dict:
    files = cuda_test_files()
    if not files:
        raise StepError("no test file carries pytest.mark.cuda")
    junit = check.work / "cuda-tests.xml"
    cmd = [check.python, "-m", "pytest", *map(str, files), "-m", "cuda", "-q", "-rA", "-p", "no:cacheprovider",
           f"--junitxml={junit}"]
    result: dict = {"files": [str(f.relative_to(REPO) if f.is_relative_to(REPO) else f) for f in files],
                    "command": " ".join(cmd[1:])}
    try:  # no third-party pytest plugins: the device's image has several, and these tests need none
        check.command("tests", cmd, env=check.env(PYTEST_DISABLE_PLUGIN_AUTOLOAD="1"))
    except StepError as e:  # recorded with the per-test results, which are wanted most when something failed
        result.update(e.record())
    if junit.exists():
        cases = parse_junit(junit)
        result["tests"] = cases
        result["summary"] = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "error", "skipped")}
    if "status" not in result and not result.get("summary", {}).get("passed"):
        result.update(status="failed", error="no CUDA test passed (all skipped: is CUDA visible to torch?)")
    return result


def step_bench(check: Check) -> dict:
    """bench.run's loader, train_step and teacher, one subprocess each (so one hang costs only its own timeout),
    written as bench.run writes them: OUT/bench/results.json and the README table."""
    entries: dict[str, dict] = {}
    smoke = check.plan.bench_mode == "smoke"
    for name in BENCHMARKS:
        key = f"bench.{name}"
        if check.left() < MIN_STEP_S:
            entries[name] = {"status": "skipped", "error": "time budget"}
            continue
        check.log(f"\n=== {key}: bench.run {'--smoke ' if smoke else ''}--device {check.plan.device} --only {name}")
        entries[name] = entry = run_benchmark(BY_NAME[name], quick=False, device=check.plan.device,
                                              timeout=check.timeout(key), smoke=smoke)
        check.log(json.dumps(entry, indent=1)[-20000:])
        check.report.setdefault("steps", {}).setdefault("bench", {})["benchmarks"] = entries
        check.write()
    results = {"schema": 1, "command": f"bench.gpu_check ({'dry run' if check.dry_run else check.plan.device})",
               "started": check.report.get("started"), "finished": now(), "machine": bench_machine(check.report),
               "benchmarks": {n: e for n, e in entries.items() if "module" in e}}
    bench_dir = check.out / "bench"
    bench_dir.mkdir(parents=True, exist_ok=True)
    write_outputs(results, bench_dir)
    out = {"benchmarks": entries, "rows": [r for n, e in results["benchmarks"].items() for r in rows_for(n, e)],
           "results_json": str(bench_dir / "results.json")}
    bad = [n for n, e in entries.items() if e.get("status") != "ok"]
    if bad:
        out.update(status="failed", error=f"benchmark(s) {', '.join(bad)} did not finish: " + "; ".join(
            f"{n}: {last_line(entries[n].get('stderr_tail') or entries[n].get('error') or '')}" for n in bad))
    return out


def last_line(text: str) -> str:
    """The last non-empty line (of a traceback: the exception)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def bench_machine(report: dict) -> dict:
    m = report.get("machine", {})
    return {"cpu": platform.machine(), "cores": os.cpu_count(), "python": m.get("python"), "torch": m.get("torch"),
            "cuda": m.get("gpu")}


def step_train(check: Check) -> dict:
    from bench.common import build_bench_cache

    cache = check.work / "train-cache"
    if not (cache / "zarr.json").exists():
        build_bench_cache(cache, check.plan.train_frames, frames_per_scene=40)
    run = check.work / "train-run"
    shutil.rmtree(run, ignore_errors=True)
    args = check.plan.train_args
    iters = int(args[args.index("--iters") + 1])
    cmd = [check.python, "-m", "pipeline.cli", "train", "--cache", str(cache), "--out", str(run), "--mode", "paired",
           "--device", check.plan.device, "--checkpoint-every", str(iters), "--quiet", "--json", *args]
    try:
        done = check.command("train", cmd)
    finally:
        if (run / "log.csv").exists():
            shutil.copy(run / "log.csv", check.out / "train_log.csv")
    summary = json.loads([ln for ln in done.stdout.splitlines() if ln.startswith("{")][-1])
    with open(run / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    later = rows[1:] or rows  # the first interval holds start-up (cuDNN autotuning, the loader filling up)
    losses = [float(r["loss"]) for r in rows]
    out = {"command": " ".join(cmd[1:]), "iterations": summary["iterations"],
           "frames_in_cache": check.plan.train_frames, "peak_gpu_memory_mb": summary.get("peak_gpu_memory_mb"),
           "last": summary.get("last"),
           "data_wait_frac": round(statistics.mean(float(r["data_wait_frac"]) for r in later), 4),
           "step_time_s": round(statistics.median(float(r["step_time"]) for r in later), 4),
           "frames_per_s": round(statistics.median(float(r["frames_per_s"]) for r in later), 2),
           "loss_first": losses[0], "loss_last": losses[-1], "log_rows": len(rows)}
    if not all(math.isfinite(v) for v in losses) or summary["iterations"] != iters:
        out.update(status="failed", error=f"{summary['iterations']}/{iters} iterations, losses {losses}")
    return out


def _checksums(path: Path) -> dict:
    from cache_schema import open_cache

    cache = open_cache(path)
    return {s: cache.scene(s).attrs["checksums"] for s in cache.complete_scenes()}


def step_extract(check: Check) -> dict:
    """The per-GPU dask workers on the device: 2 workers (on one GPU they share it) against the in-process run.
    One torch thread in every process (as dask gives its workers): CPU float rounding depends on the thread count."""
    world = check.work / "world"
    py = [check.python, "-m", "pipeline.cli"]
    if not (world / ".complete").exists():
        check.command("extract", [*py, "synth", "scannet", str(world), "--seed", "0", *check.plan.world_args])
        (world / ".complete").touch()
    env = check.env(OMP_NUM_THREADS="1")
    runs = {}
    for name, extra in (("serial", ()), ("workers", ("--workers", "2"))):
        out = check.work / f"cache-{name}"
        shutil.rmtree(out, ignore_errors=True)
        done = check.command("extract", [*py, "extract", "--dataset", "scannet", "--root", str(world), "--out",
                                         str(out), "--teacher-init", "random", "--seed", "0", "--device",
                                         check.plan.device, "--quiet", *check.plan.extract_args, *extra], env=env)
        runs[name] = {"seconds": round(done.seconds, 1), "cache": str(out),
                      "log": [ln for ln in done.stdout.splitlines() + done.stderr.splitlines()
                              if ln.startswith(("dask", "cache", "teacher"))][-6:]}
    a, b = _checksums(Path(runs["serial"]["cache"])), _checksums(Path(runs["workers"]["cache"]))
    out = {"runs": runs, "scenes": sorted(a), "caches_equal": a == b and bool(a)}
    if not out["caches_equal"]:
        differing = sorted(s for s in set(a) | set(b) if a.get(s) != b.get(s))
        out.update(status="failed", error=f"the 2-worker cache differs from the in-process one in {differing}")
    return out


STEP_FUNCTIONS: dict[str, Callable[[Check], dict]] = {
    "tests": step_tests, "bench": step_bench, "train": step_train, "extract": step_extract}


# ---------------------------------------------------------------------------------------------------- the report

def figures(steps: dict) -> dict:
    """The headline numbers of whatever steps ran (see FIGURES)."""
    f: dict = dict.fromkeys(FIGURES)
    tests = steps.get("tests", {}).get("summary")
    if tests:
        f.update(tests_passed=tests["passed"], tests_failed=tests["failed"] + tests["error"],
                 tests_skipped=tests["skipped"])
    benches = steps.get("bench", {}).get("benchmarks", {})
    loader = next((r for r in benches.get("loader", {}).get("results", []) if "gpu_batches_per_s" in r), None)
    if loader:
        f.update(loader_gpu_batches_per_s=loader["gpu_batches_per_s"], loader_gpu_frames_per_s=loader[
            "gpu_frames_per_s"], loader_nvjpeg=loader["gpu_nvjpeg"], bench_data_wait_frac=loader["data_wait_frac"],
            bench_train_step_s=loader["step_time_s"])
    step = next(iter(benches.get("train_step", {}).get("results", [])), None)
    if step:
        f.update(train_step_paired_s=step["paired_step_s"], train_step_baseline_s=step["baseline_step_s"],
                 train_step_ratio=step["ratio"])
    teacher = next(iter(benches.get("teacher", {}).get("results", [])), None)
    if teacher and teacher.get("reference_backend"):
        fastest = teacher.get("fastest") or teacher["reference_backend"]
        f.update(teacher_seconds_per_room=round(teacher["backends"][fastest]["seconds"], 3),
                 teacher_points=teacher["points"], teacher_backend=fastest)
    train = steps.get("train", {})
    if "iterations" in train:
        f.update(train_iterations=train["iterations"], train_data_wait_frac=train["data_wait_frac"],
                 train_step_s=train["step_time_s"], train_frames_per_s=train["frames_per_s"],
                 train_final_loss=train["loss_last"], train_peak_gpu_memory_mb=train["peak_gpu_memory_mb"])
    extract = steps.get("extract", {})
    if "caches_equal" in extract:
        f.update(extract_caches_equal=extract["caches_equal"], extract_serial_s=extract["runs"]["serial"]["seconds"],
                 extract_workers_s=extract["runs"]["workers"]["seconds"])
    return f


PROBE = """
import json, platform, importlib.metadata as md
out = {"python": platform.python_version()}
try:
    import torch
    out["torch"] = torch.__version__
    out["cuda_available"] = torch.cuda.is_available()
    out["torch_cuda"] = torch.version.cuda
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        out.update(gpu=p.name, gpu_count=torch.cuda.device_count(), gpu_memory_gb=round(p.total_memory / 2**30, 1),
                   capability=f"{p.major}.{p.minor}", bf16=torch.cuda.is_bf16_supported())
except Exception as e:
    out["torch_error"] = f"{type(e).__name__}: {e}"
versions = {}
for name in ("numpy", "zarr", "numcodecs", "dask", "distributed", "opencv-python-headless", "torchvision", "spconv",
             "MinkowskiEngine", "plyfile", "tensorboard"):
    try:
        versions[name] = md.version(name)
    except md.PackageNotFoundError:
        versions[name] = None
out["packages"] = versions
print(json.dumps(out))
"""


def probe_machine(check: Check) -> dict:
    """Python, torch, the GPU and our dependencies' versions, read in a subprocess (this process stays CUDA-free)."""
    done = run_command([check.python, "-c", PROBE], 120, env=check.env())
    info: dict = {"host": platform.node(), "cores": os.cpu_count()}
    try:
        info |= json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        info["probe_error"] = _tail(done)
    smi = shutil.which("nvidia-smi")
    if smi:
        q = run_command([smi, "--query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm",
                         "--format=csv,noheader"], 30)
        info["nvidia_smi"] = q.stdout.strip() or _tail(q)
    return info


def summary_lines(report: dict) -> list[str]:
    lines = [f"gpu-check ({'dry run, CPU' if report.get('dry_run') else report.get('device')}) "
             f"in {report.get('wall_s')} s:"]
    for name, e in report.get("steps", {}).items():
        lines.append(f"  {name:<8} {e.get('status'):<8} {e.get('seconds', 0):>7.1f} s  {e.get('error', '')[:150]}")
    lines.append("  figures: " + ", ".join(f"{k}={v}" for k, v in report.get("figures", {}).items()
                                           if v is not None))
    lines.append("  targets: " + ", ".join(f"{k}={v}" for k, v in report.get("targets", {}).items()))
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or REPO / "runs" / "gpu-check"),
                    help="where gpu_check.json, gpu_check.log, bench/ and train_log.csv go (default: $OUT)")
    ap.add_argument("--dry-run", action="store_true", help="on the CPU, tiny sizes: checks the check itself")
    ap.add_argument("--steps", default=",".join(STEPS), help=f"comma list of {', '.join(STEPS)}")
    ap.add_argument("--budget", type=float, default=0, help="seconds for the whole check (0: the plan's)")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    a = ap.parse_args(argv)
    steps = [s.strip() for s in a.steps.split(",") if s.strip()]
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        ap.error(f"unknown step(s) {unknown}; choose from {', '.join(STEPS)}")
    plan = DRY if a.dry_run else GPU
    if a.budget:
        plan = Plan(**{**asdict(plan), "budget_s": a.budget})
    a.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = a.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        check = Check(plan=plan, out=a.out, work=work, dry_run=a.dry_run)
        check.log_path.write_text(f"gpu-check started {now()} ({'dry run' if a.dry_run else 'GPU'}), steps "
                                  f"{', '.join(steps)}, budget {plan.budget_s:.0f} s\n")
        check.report = {"schema": 1, "kind": "gpu-check", "dry_run": a.dry_run, "device": plan.device,
                        "started": now(), "budget_s": plan.budget_s, "steps_requested": steps,
                        "setup": os.environ.get("GPU_CHECK_SETUP", "none"), "plan": asdict(plan)}
        check.report["machine"] = probe_machine(check)
        check.write()
        if not a.dry_run and not check.report["machine"].get("cuda_available"):
            print("[gpu-check] warning: torch sees no CUDA device here; the steps will fail (use --dry-run on a CPU)",
                  flush=True)
        for name in steps:
            check.run_step(name, STEP_FUNCTIONS[name])
        check.report["finished"] = now()
        check.write()
    print("\n".join(summary_lines(check.report)), flush=True)
    failed = [n for n, e in check.report["steps"].items() if e["status"] != "ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
