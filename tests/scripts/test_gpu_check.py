"""`make gpu-check` (scripts/gpu_check.sh -> bench/gpu_check.py): its dry run end to end on the CPU, so that the
check cannot rot while no GPU is lent, and how it records steps that fail, hang or find no time left."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `bench` is importable from the repository root only
    sys.path.insert(0, str(REPO))
gpu_check = importlib.import_module("bench.gpu_check")
bench_run = importlib.import_module("bench.run")

CUDA_TEST_FILES = {"tests/train/test_loader_cuda.py", "tests/train/test_trainer_cuda.py",
                   "tests/extract/test_teacher_cuda.py"}


def test_dry_run_writes_every_step_in_the_gpu_runs_shape(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop(gpu_check.CUDA_STANDIN, None)  # the script sets it for its own test step
    p = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry-run", "--out", str(out)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["dry_run"] is True and report["device"] == "cpu" and report["setup"].startswith("dry run")
    assert list(report["steps"]) == list(gpu_check.STEPS)
    for name, step in report["steps"].items():
        assert step["status"] == "ok", (name, step.get("error"), step.get("error_tail"))
        assert step["seconds"] > 0
    assert list(report["figures"]) == list(gpu_check.FIGURES)  # the GPU run fills the same keys
    assert set(report["targets"]) == set(gpu_check.TARGETS)
    # 1. the CUDA tests ran, with the CPU standing in; the CUDA-only ones skipped with their reason
    tests = report["steps"]["tests"]
    assert set(tests["files"]) == CUDA_TEST_FILES
    assert tests["summary"]["passed"] >= 4 and tests["summary"]["failed"] == tests["summary"]["error"] == 0
    outcomes = {t["name"].split("::")[-1]: t for t in tests["tests"]}
    assert outcomes["test_device_path_on_cuda_equals_the_cpu_paths"]["outcome"] == "passed"
    assert outcomes["test_mixed_precision_steps_are_finite_and_learn[bf16]"]["outcome"] == "passed"
    assert outcomes["test_sync_batchnorm_under_ddp_equals_plain_batchnorm"]["outcome"] == "skipped"
    assert "only on CUDA" in outcomes["test_sync_batchnorm_under_ddp_equals_plain_batchnorm"]["message"]
    # 2. the three benchmarks, written as bench.run writes them, with the GPU figures' code exercised
    bench = report["steps"]["bench"]
    assert {n: e["status"] for n, e in bench["benchmarks"].items()} == dict.fromkeys(gpu_check.BENCHMARKS, "ok")
    assert all(e["mode"] == "smoke" for e in bench["benchmarks"].values())
    results = json.loads((out / "bench" / "results.json").read_text())
    assert set(results["benchmarks"]) == set(gpu_check.BENCHMARKS)
    assert {r["item"] for r in results["rows"]} == {"3", "4", "6"}
    assert any(r["measure"].startswith("Trainer data wait") for r in results["rows"])
    f = report["figures"]
    assert f["loader_gpu_batches_per_s"] > 0 and 0 <= f["bench_data_wait_frac"] <= 1
    assert f["train_step_ratio"] > 0 and f["teacher_seconds_per_room"] > 0 and f["teacher_backend"] == "torch"
    # 3. the training, its log and (on the CPU: no) peak GPU memory
    assert f["train_iterations"] == 3 and f["train_peak_gpu_memory_mb"] is None
    log_rows = (out / "train_log.csv").read_text().splitlines()
    assert log_rows[0].startswith("iter,") and len(log_rows) == 1 + 3
    # 4. the extraction by two dask workers equals the in-process one
    assert f["extract_caches_equal"] is True and len(report["steps"]["extract"]["scenes"]) == 2
    log = (out / "gpu_check.log").read_text()
    for name in gpu_check.STEPS:
        assert f"=== step {name}: ok" in log
    # what comes back from a device call: few files, at most two folders down
    files = sorted(str(q.relative_to(out)) for q in out.rglob("*") if q.is_file())
    assert files == ["bench/README.md", "bench/results.json", "gpu_check.json", "gpu_check.log", "train_log.csv"]
    assert "gpu-check (dry run, CPU)" in p.stdout  # the summary the tool's output tail shows


def _check(tmp_path: Path, budget: float = 60.0, **timeouts: float) -> object:
    plan = gpu_check.Plan(**{**gpu_check.asdict(gpu_check.DRY), "budget_s": budget,
                             "timeouts": {**gpu_check.DRY.timeouts, **timeouts}})
    out = tmp_path / "out"
    out.mkdir(parents=True)
    check = gpu_check.Check(plan=plan, out=out, work=tmp_path, dry_run=True)
    check.report = {"steps": {}}
    return check


def test_failing_hanging_and_broken_steps_are_recorded_and_the_next_step_runs(tmp_path):
    check = _check(tmp_path, tests=1.0)
    py = sys.executable
    check.run_step("fails", lambda c: c.command("train", [py, "-c", "import sys; print('boom', file=sys.stderr); "
                                                              "sys.exit(3)"]))
    check.run_step("hangs", lambda c: c.command("tests", [py, "-c", "import time; time.sleep(30)"]))
    check.run_step("broken", lambda c: {"x": 1 / 0})
    check.run_step("own", lambda c: {"status": "failed", "error": "figures, but wrong", "value": 2})
    check.run_step("works", lambda c: {"answer": 42})
    steps = json.loads(check.json_path.read_text())["steps"]  # written after every step
    assert steps["fails"]["status"] == "failed" and steps["fails"]["error"] == "train exited 3: boom"
    assert steps["hangs"]["status"] == "timeout" and steps["hangs"]["seconds"] < 10
    assert steps["broken"]["status"] == "failed" and "ZeroDivisionError" in steps["broken"]["error"]
    assert "ZeroDivisionError" in steps["broken"]["error_tail"]
    assert steps["own"] == {**steps["own"], "status": "failed", "value": 2}
    assert steps["works"]["status"] == "ok" and steps["works"]["answer"] == 42
    log = check.log_path.read_text()
    assert "boom" in log and "=== step hangs: timeout" in log


def test_a_failing_cuda_test_is_recorded_with_every_test_result(tmp_path, monkeypatch):
    tests = tmp_path / "test_fake_cuda.py"
    tests.write_text("import pytest\npytestmark = pytest.mark.cuda\n\n"
                     "def test_good():\n    pass\n\n"
                     "def test_bad():\n    assert 1 + 1 == 3, 'arithmetic on the device'\n\n"
                     "@pytest.mark.skip(reason='not here')\ndef test_skipped():\n    pass\n")
    monkeypatch.setattr(gpu_check, "cuda_test_files", lambda: [tests])
    check = _check(tmp_path)
    entry = check.run_step("tests", gpu_check.step_tests)
    assert entry["status"] == "failed" and entry["error"].startswith("tests exited 1")
    assert entry["summary"] == {"passed": 1, "failed": 1, "error": 0, "skipped": 1}
    bad = next(t for t in entry["tests"] if t["name"].endswith("::test_bad"))
    assert bad["outcome"] == "failed" and "arithmetic on the device" in bad["message"]
    assert gpu_check.figures(check.report["steps"])["tests_failed"] == 1


def test_steps_left_without_time_are_skipped(tmp_path):
    check = _check(tmp_path, budget=gpu_check.MIN_STEP_S - 1)
    ran = []
    entry = check.run_step("late", lambda c: ran.append(1) or {})
    assert entry["status"] == "skipped" and "time budget" in entry["error"] and not ran
    # a command never gets more than what is left of the budget
    check = _check(tmp_path / "b", budget=100.0, train=1000.0)
    assert check.timeout("train") <= 100.0


def test_cuda_test_files_and_junit_records(tmp_path):
    assert {str(p.relative_to(REPO)) for p in gpu_check.cuda_test_files()} == CUDA_TEST_FILES
    xml = tmp_path / "j.xml"
    xml.write_text('<testsuites><testsuite name="pytest">'
                   '<testcase classname="tests.a" name="test_ok" time="0.5"/>'
                   '<testcase classname="tests.a" name="test_bad" time="1.25"><failure message="assert 1 == 2">'
                   'trace</failure></testcase>'
                   '<testcase classname="tests.b" name="test_skip" time="0"><skipped message="needs CUDA"/>'
                   '</testcase></testsuite></testsuites>')
    assert gpu_check.parse_junit(xml) == [
        {"name": "tests.a::test_ok", "outcome": "passed", "seconds": 0.5, "message": ""},
        {"name": "tests.a::test_bad", "outcome": "failed", "seconds": 1.25, "message": "assert 1 == 2"},
        {"name": "tests.b::test_skip", "outcome": "skipped", "seconds": 0.0, "message": "needs CUDA"}]


def test_figures_and_targets_from_partial_steps():
    f = gpu_check.figures({})
    assert list(f) == list(gpu_check.FIGURES) and set(f.values()) == {None}
    steps = {"train": {"iterations": 300, "data_wait_frac": 0.12, "step_time_s": 0.2, "frames_per_s": 80.0,
                       "loss_last": 2.5, "peak_gpu_memory_mb": 30000.0}}
    f = gpu_check.figures(steps)
    assert f["train_data_wait_frac"] == 0.12 and f["train_peak_gpu_memory_mb"] == 30000.0
    assert f["loader_gpu_batches_per_s"] is None


@pytest.mark.parametrize("mode,device,expected", [
    ("full", "cuda", ("--batch", "16", "--size", "473", "--amp", "bf16")),
    ("full", "cpu", ("--warmup", "2", "--repeats", "5")),
    ("quick", "cuda", ("--warmup", "1", "--repeats", "3")),
    ("smoke", "cpu", ("--depth", "18", "--batch", "2")),
])
def test_benchmark_arguments_per_mode_and_device(mode, device, expected):
    args = bench_run.BY_NAME["train_step"].args(mode, device)
    assert args[:len(expected)] == expected
    # the paper's settings on a GPU: PSPNet-50 at batch 16, 473 crops, bf16; a ~150k-point room for the teacher
    loader = bench_run.BY_NAME["loader"].args("full", "cuda")
    assert loader[loader.index("--depth"):loader.index("--depth") + 2] == ("--depth", "50")
    assert "--gpu-path" in bench_run.BY_NAME["loader"].args("smoke", "cpu")
    assert bench_run.BY_NAME["teacher"].args("full", "cuda") == ("--spacing", "0.035", "--repeats", "5")
    assert bench_run.BY_NAME["projection"].args("smoke", "cpu") == bench_run.BY_NAME["projection"].quick
