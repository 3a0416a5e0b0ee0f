"""Where stage one's dask workers run: a local cluster whose workers are each pinned to one GPU.

A worker is pinned through ``CUDA_VISIBLE_DEVICES`` in its environment, which its Nanny sets in the worker process
before anything there starts CUDA: the worker then sees exactly one GPU, as ``cuda:0``, and every library it loads
(torch, cuDNN, spconv) stays on that GPU. Worker ``i`` gets visible GPU ``i mod G``, so ``--workers G`` puts one
worker on each GPU and ``--workers 2G`` two (one scene's CPU parts, read, projection, JPEG encoding and writing,
then overlap another's teacher on the same GPU). A restarted worker keeps its name and hence its GPU.

Every pinned worker also advertises the dask resource ``GPU=1`` and CUDA scene tasks ask for it, so the same tasks
run on workers started by hand on other nodes (``dask worker ... --resources GPU=1``; the README's multi-node
recipe) without two scenes landing on one worker's GPU at once.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping

from distributed import LocalCluster

GPU_RESOURCE = "GPU"


def is_cuda(device: str) -> bool:
    return str(device).startswith("cuda")


def device_index(device: str) -> int | None:
    """``cuda:1`` -> 1; ``cuda`` (the current device) and ``cpu`` -> None."""
    _, _, index = str(device).partition(":")
    return int(index) if index else None


def _torch_device_count() -> int:
    import torch

    return torch.cuda.device_count()


def visible_gpus(device_count: Callable[[], int] | None = None, environ: Mapping[str, str] | None = None
                 ) -> list[str]:
    """The GPUs this process may hand to workers, as ``CUDA_VISIBLE_DEVICES`` entries (indices or UUIDs).

    An existing ``CUDA_VISIBLE_DEVICES`` is honoured (a scheduler or the user restricted us to those GPUs); CUDA
    ignores everything from the first negative entry on, and so do we. Otherwise ``device_count()`` GPUs (torch's
    count by default) numbered from 0.
    """
    env = os.environ if environ is None else environ
    spec = env.get("CUDA_VISIBLE_DEVICES")
    if spec is not None:
        out = []
        for entry in (e.strip() for e in spec.split(",")):
            if not entry or entry.startswith("-"):
                break
            out.append(entry)
        return out
    return [str(i) for i in range((device_count or _torch_device_count)())]


def worker_gpus(device: str, workers: int, gpus: list[str]) -> list[str]:
    """The ``CUDA_VISIBLE_DEVICES`` value of each of ``workers`` local workers for a teacher on ``device``:
    round-robin over ``gpus`` for ``cuda``, all on that one GPU for ``cuda:K``."""
    if not gpus:
        raise ValueError(f"--device {device}: no CUDA device is visible here (torch.cuda.device_count() is 0 or "
                         "CUDA_VISIBLE_DEVICES hides them all)")
    if workers < 1:
        raise ValueError(f"need at least one worker, got {workers}")
    index = device_index(device)
    if index is not None:
        if index >= len(gpus):
            raise ValueError(f"--device {device}: only {len(gpus)} GPU(s) are visible ({', '.join(gpus)})")
        return [gpus[index]] * workers
    return [gpus[i % len(gpus)] for i in range(workers)]


class PinnedGPUCluster(LocalCluster):
    """A LocalCluster of single-threaded worker processes, worker ``i`` pinned to ``assignment[i]`` (see the module
    docstring) and advertising one ``GPU`` resource."""

    def __init__(self, assignment: list[str], **kwargs):
        if not assignment:
            raise ValueError("PinnedGPUCluster needs at least one worker")
        self.assignment = list(assignment)
        # started empty: LocalCluster would launch its workers from the shared template before we could pin them;
        # so its share of the host's memory per worker (a fraction of the total) is given here
        kwargs.setdefault("memory_limit", 1 / len(self.assignment))
        super().__init__(n_workers=0, threads_per_worker=1, processes=True, resources={GPU_RESOURCE: 1}, **kwargs)
        self.scale(len(self.assignment))

    def new_worker_spec(self) -> dict:
        ((name, spec),) = super().new_worker_spec().items()
        spec = copy.deepcopy(spec)  # the template is shared by all workers; the environment is this worker's own
        options = spec.setdefault("options", {})
        gpu = self.assignment[int(name) % len(self.assignment)]
        options["env"] = {**(options.get("env") or {}), "CUDA_VISIBLE_DEVICES": gpu}
        return {name: spec}


def gpu_resource_workers(scheduler_info: Mapping) -> int:
    """How many of a scheduler's workers advertise a ``GPU`` resource."""
    return sum(1 for w in scheduler_info.get("workers", {}).values()
               if (w.get("resources") or {}).get(GPU_RESOURCE, 0) >= 1)


def task_resources(device: str, scheduler_info: Mapping) -> dict[str, int] | None:
    """What each scene task asks of a worker: one GPU for a CUDA teacher where workers advertise GPUs; nothing for
    a CPU teacher, or where no worker advertises one (then one task per worker thread, dask's default; asking for a
    resource nobody has would leave the tasks waiting forever)."""
    if is_cuda(device) and gpu_resource_workers(scheduler_info):
        return {GPU_RESOURCE: 1}
    return None
