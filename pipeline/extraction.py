"""Stage one's driver: scenes as tasks (in-process or on dask.distributed), resumable, one writer per scene."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path

from tqdm import tqdm

from cache_schema import CacheWriter, DatasetInfo, ImageEncoding, Manifest, ProjectionParams, TeacherInfo
from cache_schema.labels import LABEL_SPACES
from stages.extract.formats.common import fingerprint_files
from stages.extract.formats.registry import DatasetSpec, open_dataset
from stages.extract.job import ExtractionError, JobConfig, SceneResult, extract_scene


@dataclass(frozen=True)
class TeacherSpec:
    kind: str = "checkpoint"  # checkpoint: the 3D network | label-embedding: the labels-only control, no network
    checkpoint: Path | None = None
    init: str = "checkpoint"  # checkpoint | random
    seed: int = 0  # of --teacher-init random's weights, or of the label embedding
    channels: int = 96  # label-embedding only (a network's width is its layer's)
    backend: str = "auto"
    device: str = "cpu"
    layer: str = "block8"
    voxel_size: float = 0.02
    architecture: str = "Res16UNet34C"


def teacher_geometry(checkpoint: Path | None, architecture: str | None, voxel_size: float | None
                     ) -> tuple[str, float, str | None]:
    """(architecture, voxel size, where they came from) for extracting with `checkpoint`.

    Explicit values win. Otherwise `train-teacher`'s sidecar (CHECKPOINT.json) supplies them when it describes this
    very file (its checkpoint_sha256 matches); a sidecar of other weights is an error rather than a silent guess.
    Without a sidecar: the paper's Res16UNet34C at 2 cm.
    """
    from stages.extract.teacher.checkpoint import checkpoint_sha256, sidecar_path

    source = None
    if checkpoint is not None and (architecture is None or voxel_size is None):
        side = sidecar_path(checkpoint)
        if side.is_file():
            try:
                meta = json.loads(side.read_text())
                cfg, sha = meta["config"], meta["checkpoint_sha256"]
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{side}: not a train-teacher sidecar ({e}); pass --architecture and --voxel-size"
                                 ) from e
            if sha != checkpoint_sha256(Path(checkpoint)):
                raise ValueError(f"{side} describes other weights than {checkpoint} (sha256 differs); remove it or "
                                 "pass --architecture and --voxel-size")
            architecture = architecture or str(cfg["architecture"])
            voxel_size = voxel_size if voxel_size is not None else float(cfg["voxel_size"])
            source = str(side)
    return architecture or "Res16UNet34C", 0.02 if voxel_size is None else float(voxel_size), source


@dataclass
class ExtractionReport:
    out: str
    fingerprint: str
    scenes_total: int
    scenes_skipped_complete: int
    results: list[SceneResult] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    backend: str = ""
    wall_seconds: float = 0.0
    dashboard: str | None = None


class LockedError(RuntimeError):
    pass


@contextmanager
def extraction_lock(out: Path) -> Iterator[None]:
    """Refuse a second extraction into the same cache at the same time (a stale lock of a dead pid is taken over)."""
    lock = out / ".extract.lock"
    me = f"{socket.gethostname()} {os.getpid()}"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.write(fd, me.encode())
            os.close(fd)
            break
        except FileExistsError:
            host, _, pid = lock.read_text().partition(" ")
            if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
                lock.unlink(missing_ok=True)
                continue
            raise LockedError(f"{out} is being written by another extraction ({host} pid {pid}); "
                              f"if that process is gone, delete {lock}") from None
    try:
        yield
    finally:
        if lock.exists() and lock.read_text() == me:
            lock.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@lru_cache(maxsize=2)
def _teacher(spec: TeacherSpec, label_space: str):
    """One teacher per process (dask workers reuse it across the scenes they are given)."""
    if spec.kind == "label-embedding":
        from stages.extract.label_embedding import LabelEmbeddingTeacher

        return LabelEmbeddingTeacher(LABEL_SPACES[label_space], channels=spec.channels, seed=spec.seed)
    if spec.kind != "checkpoint":
        raise ValueError(f"unknown teacher kind {spec.kind!r}; choose 'checkpoint' or 'label-embedding'")
    from stages.extract.teacher import TeacherConfig, load_teacher

    cfg = TeacherConfig(architecture=spec.architecture, voxel_size=spec.voxel_size, layer=spec.layer,
                        backend=spec.backend, device=spec.device)
    return load_teacher(cfg, spec.checkpoint, init=spec.init, seed=spec.seed)


def _scene_task(dataset: DatasetSpec, teacher: TeacherSpec | None, out: str, manifest_json: dict, scene: str,
                job: JobConfig) -> SceneResult:
    """A dask task: exactly one writer for `scene`."""
    reader = open_dataset(dataset)
    writer = CacheWriter.create(out, Manifest.from_json(manifest_json))
    try:
        return extract_scene(reader, scene, _teacher(teacher, reader.label_space) if teacher else None, writer,
                             job)
    except ExtractionError as e:
        return SceneResult(scene=scene, error=str(e))


def build_manifest(dataset: DatasetSpec, teacher_info: dict | None, job: JobConfig, version: str) -> Manifest:
    reader = open_dataset(dataset)
    names = sorted(reader.scene_names())
    if not names:
        raise ExtractionError(f"no scenes found under {dataset.root}")
    per_scene = hashlib.sha256()
    for n in names:
        files = reader.scene_input_files(n)
        per_scene.update(f"{n}:{fingerprint_files(dataset.root, files)}\n".encode())
    space = LABEL_SPACES[reader.label_space]
    split = str(dataset.split_file.name) if dataset.split_file else ("explicit" if dataset.scenes else None)
    teacher = None
    if teacher_info is not None:
        teacher = TeacherInfo(**{k: teacher_info[k] for k in ("architecture", "backend", "checkpoint_sha256",
                                                               "voxel_size", "channels")},
                              feature_layer=teacher_info["feature_layer"])
    p = job.projection
    projection = ProjectionParams(stride=p.stride, dilation=p.dilation, depth_check=p.depth_check,
                                  depth_abs_tol=p.depth_abs_tol, depth_rel_tol=p.depth_rel_tol, sampling=p.sampling,
                                  image_size=list(job.image_size) if job.image_size else None,
                                  frame_skip=job.frame_skip)
    return Manifest(dataset=DatasetInfo(name=dataset.name, label_space=space.to_json(), scenes=names, split=split,
                                        input_fingerprint=per_scene.hexdigest()),
                    projection=projection,
                    # a 2D-only cache has no features to encode: float16 (the default) keeps it the same either way
                    encoding=ImageEncoding(job.image_format, job.jpeg_quality,
                                           features=job.feature_dtype if teacher is not None else "float16"),
                    teacher=teacher, producer={"name": "distill-cache", "version": version})


def run_extraction(dataset: DatasetSpec, teacher: TeacherSpec | None, out: Path, job: JobConfig, *,
                   workers: int = 1, scheduler: str | None = None, version: str = "0", progress: bool = True,
                   log=print) -> ExtractionReport:
    t0 = time.perf_counter()
    reader = open_dataset(dataset)
    if not reader.has_3d:
        teacher = None
    info = None
    distributed = workers > 1 or scheduler is not None
    if teacher is not None:
        model = _teacher(_describing_teacher(teacher) if distributed else teacher, reader.label_space)
        info = dict(model.info)
        if distributed and teacher.kind == "checkpoint":
            # every worker builds the backend the manifest records, whatever `auto` would pick there
            teacher = replace(teacher, backend=info["backend"])
        if teacher.kind == "label-embedding":
            log(f"teacher: the label-embedding control (seed {teacher.seed}, {info['channels']} channels): each "
                "point's label embedded, no network")
        else:
            log(f"teacher: {info['architecture']} ({info['checkpoint_sha256'][:19]}), backend {info['backend']}, "
                f"{info['channels']} channels from {info['feature_layer']}")
    manifest = build_manifest(dataset, info, job, version)
    out.mkdir(parents=True, exist_ok=True)
    with extraction_lock(out):
        writer = CacheWriter.create(out, manifest)
        names = manifest.dataset.scenes
        todo = [s for s in names if writer.scene_status(s) != "complete"]
        report = ExtractionReport(out=str(out), fingerprint=manifest.fingerprint(), scenes_total=len(names),
                                  scenes_skipped_complete=len(names) - len(todo),
                                  backend=info["backend"] if info else "none (2D-only)")
        if report.scenes_skipped_complete:
            log(f"resuming: {report.scenes_skipped_complete} of {len(names)} scenes already complete")
        bar = tqdm(total=len(todo), desc="scenes", unit="scene", disable=not progress, file=sys.stderr)
        if workers <= 1 and scheduler is None:
            for s in todo:
                frames_bar = tqdm(desc=f"  {s} frames", unit="frame", leave=False, disable=not progress,
                                  file=sys.stderr)
                try:
                    r = extract_scene(reader, s, _teacher(teacher, reader.label_space) if teacher else None, writer,
                                      job, on_frame=frames_bar.update)
                except ExtractionError as e:
                    r = SceneResult(scene=s, error=str(e))
                frames_bar.close()
                _collect(report, r, log)
                bar.update(1)
        else:
            report.dashboard = _run_dask(dataset, teacher, out, manifest, todo, job, workers, scheduler, report,
                                         bar, log)
        bar.close()
        writer.finalize_stats()
    report.wall_seconds = time.perf_counter() - t0
    return report


def _describing_teacher(teacher: TeacherSpec) -> TeacherSpec:
    """The teacher the driver builds only to describe the cache (architecture, backend, channels, checkpoint) when
    dask workers do the extracting: on the CPU, so that the driver holds no GPU memory beside the workers, with the
    backend the workers will resolve on their device."""
    from pipeline.cluster import is_cuda

    if teacher.kind != "checkpoint" or not is_cuda(teacher.device):
        return teacher
    from stages.extract.teacher import resolve_backend

    return replace(teacher, device="cpu", backend=resolve_backend(teacher.backend, teacher.device))


def _collect(report: ExtractionReport, r: SceneResult, log) -> None:
    if r.error:
        report.failed[r.scene] = r.error
        log(f"FAILED {r.scene}: {r.error}")
    else:
        report.results.append(r)


@contextmanager
def _dask_client(teacher: TeacherSpec | None, workers: int, scheduler: str | None, log):
    """(client, the teacher as the workers must build it) on the given scheduler or a local cluster, closed on exit.

    A local cluster for a CUDA teacher pins each worker to one GPU (pipeline.cluster); the workers then build the
    teacher on ``cuda``, their one visible GPU."""
    from dask.distributed import Client, LocalCluster

    from pipeline.cluster import PinnedGPUCluster, is_cuda, visible_gpus, worker_gpus

    cluster = None
    pinned: list[str] = []
    try:
        if scheduler:
            client = Client(scheduler)
        elif teacher is not None and teacher.kind == "checkpoint" and is_cuda(teacher.device):
            pinned = worker_gpus(teacher.device, workers, visible_gpus())
            cluster = PinnedGPUCluster(pinned, dashboard_address=":0", silence_logs=40)
            client = Client(cluster)
            client.wait_for_workers(len(pinned), timeout=300)
            teacher = replace(teacher, device="cuda")
        else:
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                                   silence_logs=40)
            client = Client(cluster)
        try:
            if pinned:
                log("dask workers pinned to GPUs (CUDA_VISIBLE_DEVICES): "
                    + ", ".join(f"worker {i} -> {g}" for i, g in enumerate(pinned)))
            yield client, teacher
        finally:
            client.close()
    finally:
        if cluster is not None:
            cluster.close()


def _run_dask(dataset, teacher, out, manifest, todo, job, workers, scheduler, report, bar, log) -> str | None:
    from dask.distributed import as_completed

    from pipeline.cluster import GPU_RESOURCE, is_cuda, task_resources

    with _dask_client(teacher, workers, scheduler, log) as (client, task_teacher):
        dashboard = client.dashboard_link
        info = client.scheduler_info()
        cuda = task_teacher is not None and task_teacher.kind == "checkpoint" and is_cuda(task_teacher.device)
        resources = task_resources(task_teacher.device, info) if cuda else None
        log(f"dask: {len(info['workers'])} workers, dashboard {dashboard}"
            + (f"; each scene asks for {resources}" if resources else ""))
        if cuda and scheduler and not resources:
            log(f"warning: no worker of {scheduler} advertises a {GPU_RESOURCE} resource, so scenes go to any free "
                f"worker thread; start one single-threaded worker per GPU with --resources {GPU_RESOURCE}=1 (README)")
        mj = manifest.to_json()
        futures = [client.submit(_scene_task, dataset, task_teacher, str(out), mj, s, job, key=f"scene-{s}",
                                 pure=False, resources=resources)
                   for s in todo]
        for fut in as_completed(futures):
            _collect(report, fut.result(), log)
            bar.update(1)
    return dashboard


def summary_table(report: ExtractionReport) -> str:
    """The closing table: frames, coverage, skipped frames by reason, time per part."""
    parts = ("read", "teacher", "projection", "encode", "write")
    lines = [f"{'scene':<24} {'frames':>6} {'coverage':>8} " + " ".join(f"{p:>10}" for p in parts) + "  skipped"]
    tot = {p: 0.0 for p in parts}
    frames = cells = grid = 0
    skips: dict[str, int] = {}
    for r in sorted(report.results, key=lambda r: r.scene):
        for p in parts:
            tot[p] += r.seconds.get(p, 0.0)
        frames, cells, grid = frames + r.frames, cells + r.cells, grid + r.grid_cells
        for k, v in r.skips.items():
            skips[k] = skips.get(k, 0) + v
        sk = ", ".join(f"{k}: {v}" for k, v in r.skips.items()) or "-"
        lines.append(f"{r.scene:<24} {r.frames:>6} {r.coverage:>8.1%} "
                     + " ".join(f"{r.seconds.get(p, 0):>9.2f}s" for p in parts) + f"  {sk}")
    cov = cells / grid if grid else 0.0
    sk = ", ".join(f"{k}: {v}" for k, v in skips.items()) or "-"
    lines.append(f"{'total':<24} {frames:>6} {cov:>8.1%} " + " ".join(f"{tot[p]:>9.2f}s" for p in parts) + f"  {sk}")
    return "\n".join(lines)


def report_json(report: ExtractionReport) -> dict:
    d = asdict(report)
    d["results"] = [asdict(r) for r in report.results]
    return d
