"""Per-GPU extraction workers (pipeline.cluster), on the CPU with a stubbed GPU count: which GPU each worker is
pinned to, that the pinning holds inside the worker processes and survives a restart, and what scene tasks ask
of a scheduler's workers."""

from __future__ import annotations

import os

import pytest

from pipeline.cluster import (
    GPU_RESOURCE,
    PinnedGPUCluster,
    device_index,
    task_resources,
    visible_gpus,
    worker_gpus,
)


def test_visible_gpus_from_the_device_count_or_cuda_visible_devices():
    assert visible_gpus(device_count=lambda: 3, environ={}) == ["0", "1", "2"]
    assert visible_gpus(device_count=lambda: 0, environ={}) == []
    # an existing restriction is honoured as given (indices or UUIDs), up to CUDA's first negative entry
    stub = lambda: pytest.fail("the device count is not asked when CUDA_VISIBLE_DEVICES is set")  # noqa: E731
    assert visible_gpus(stub, {"CUDA_VISIBLE_DEVICES": "3, 5"}) == ["3", "5"]
    assert visible_gpus(stub, {"CUDA_VISIBLE_DEVICES": "GPU-1a2b,GPU-3c4d"}) == ["GPU-1a2b", "GPU-3c4d"]
    assert visible_gpus(stub, {"CUDA_VISIBLE_DEVICES": "2,-1,3"}) == ["2"]
    assert visible_gpus(stub, {"CUDA_VISIBLE_DEVICES": ""}) == []


def test_worker_gpus_round_robin_or_one_named_gpu():
    gpus = visible_gpus(device_count=lambda: 3, environ={})
    assert worker_gpus("cuda", 3, gpus) == ["0", "1", "2"]  # one worker per GPU, each its own
    assert worker_gpus("cuda", 2, gpus) == ["0", "1"]
    assert worker_gpus("cuda", 6, gpus) == ["0", "1", "2", "0", "1", "2"]  # two per GPU
    assert worker_gpus("cuda", 4, ["3", "5"]) == ["3", "5", "3", "5"]  # the visible GPUs, not 0..n-1
    assert worker_gpus("cuda:1", 2, ["3", "5"]) == ["5", "5"]  # cuda:K is the K-th visible GPU
    assert device_index("cuda:1") == 1 and device_index("cuda") is None and device_index("cpu") is None
    with pytest.raises(ValueError, match="no CUDA device is visible"):
        worker_gpus("cuda", 2, [])
    with pytest.raises(ValueError, match="only 2 GPU"):
        worker_gpus("cuda:2", 1, ["0", "1"])


def _where_am_i(dask_worker=None) -> dict:
    """Run inside a worker (as a task, or through `client.run`, which passes `dask_worker`): its name and the GPUs a
    process there sees (what the teacher's `cuda` resolves to)."""
    from distributed import get_worker

    from pipeline.cluster import visible_gpus

    return {"name": (dask_worker or get_worker()).name, "pid": os.getpid(),
            "visible": visible_gpus(device_count=lambda: pytest.fail("pinned workers must not count devices"))}


def test_pinned_workers_each_see_their_own_gpu_and_keep_it(tmp_path):
    from distributed import Client

    assignment = worker_gpus("cuda", 3, visible_gpus(device_count=lambda: 2, environ={}))
    assert assignment == ["0", "1", "0"]
    with PinnedGPUCluster(assignment, dashboard_address=":0", silence_logs=40,
                          local_directory=str(tmp_path)) as cluster, Client(cluster) as client:
        client.wait_for_workers(3, timeout=120)
        info = client.scheduler_info()["workers"]
        assert all(w["resources"] == {GPU_RESOURCE: 1} for w in info.values())
        before = client.run(_where_am_i)
        by_name = {r["name"]: r["visible"] for r in before.values()}
        assert by_name == {0: ["0"], 1: ["1"], 2: ["0"]}  # exactly one GPU each, worker i on GPU i mod 2
        # tasks that ask for the GPU resource run where the worker's GPU is, on every call
        futures = [client.submit(_where_am_i, pure=False, resources={GPU_RESOURCE: 1}) for _ in range(12)]
        for r in client.gather(futures):
            assert r["visible"] == [assignment[r["name"]]]
        # a restarted worker comes back on the same GPU
        addr = next(a for a, r in before.items() if r["name"] == 1)
        client.restart_workers([addr])
        client.wait_for_workers(3, timeout=120)
        after = {r["name"]: r for r in client.run(_where_am_i).values()}
        assert after[1]["visible"] == ["1"] and after[1]["pid"] != before[addr]["pid"]


def test_task_resources_ask_for_a_gpu_only_where_workers_have_one():
    gpu_workers = {"workers": {"tcp://a:1": {"resources": {GPU_RESOURCE: 1}}, "tcp://b:1": {"resources": {}}}}
    plain = {"workers": {"tcp://a:1": {"resources": {}}, "tcp://b:1": {}}}
    assert task_resources("cuda", gpu_workers) == {GPU_RESOURCE: 1}
    assert task_resources("cuda:0", gpu_workers) == {GPU_RESOURCE: 1}
    assert task_resources("cuda", plain) is None  # nobody could ever run a task that asked for one
    assert task_resources("cpu", gpu_workers) is None


def test_the_driver_describes_a_cuda_teacher_on_the_cpu_with_the_workers_backend(monkeypatch):
    """With dask workers the driver builds the teacher only to describe the cache: on the CPU (no GPU memory held
    beside the workers), with the backend `auto` resolves for CUDA; the workers then build that same backend."""
    from pipeline.extraction import TeacherSpec, _describing_teacher
    from stages.extract.teacher import backends

    monkeypatch.setattr(backends, "_probe", lambda name: (True, "1.0"))
    monkeypatch.setattr(backends, "cuda_support", lambda name: (name == "torch", "its build is CPU-only"))
    described = _describing_teacher(TeacherSpec(device="cuda:1", backend="auto"))
    assert (described.device, described.backend) == ("cpu", "torch")  # spconv here has no CUDA kernels
    cpu = TeacherSpec(device="cpu", backend="auto")
    assert _describing_teacher(cpu) is cpu
