"""`distill-cache train-teacher`: train the 3D teacher (Res16UNet34C by default) on labelled 3D scans."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import click


def _read_split(path: Path | None) -> list[str] | None:
    if path is None:
        return None
    names = [ln.strip() for ln in Path(path).read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    if not names:
        raise click.BadParameter(f"split file {path} lists no scenes")
    return names


def _names(text: str | None) -> list[str] | None:
    return [s.strip() for s in text.split(",") if s.strip()] if text else None


def _load(dataset: str, root: Path, scenes: list[str] | None, split_file: Path | None, what: str,
          progress: bool = True):
    from tqdm import tqdm

    from stages.extract.formats.registry import DatasetSpec, open_dataset

    if dataset == "s3dis" and split_file is not None:  # S3DIS has no official split files: read names here
        scenes, split_file = _read_split(split_file), None
    reader = open_dataset(DatasetSpec(name=dataset, root=root, scenes=tuple(scenes) if scenes else None,
                                      split_file=split_file))
    names = reader.scene_names()
    if not names:
        raise click.ClickException(f"no {what} scenes found under {root}")
    records = [reader.load_scene(n) for n in tqdm(names, desc=f"load {what}", unit="scene", file=sys.stderr,
                                                   disable=not progress)]
    return reader.label_space, records


@click.command("train-teacher")
@click.option("--dataset", type=click.Choice(["scannet", "s3dis"]), required=True, help="Dataset format of ROOT.")
@click.option("--root", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Dataset root (as for `extract`).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Checkpoint to write (.pth; a JSON sidecar with metrics is written next to it as OUT.json).")
@click.option("--scenes", help="Comma-separated training scenes (default: every scene under ROOT).")
@click.option("--split-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="File listing training scenes, one per line.")
@click.option("--extra-root", "extra_roots", multiple=True, type=click.Path(exists=True, file_okay=False,
              path_type=Path), help="More labelled 3D scans to train on (repeatable): the scenes its "
              "scannetv2_train.txt lists (ScanNet; e.g. `synth scannet DIR --frames 0`), or every room (S3DIS). "
              "The paper's premise: a large 3D repository teaches the teacher more than the frames' rooms alone.")
@click.option("--val-scenes", help="Comma-separated held-out scenes for 3D mIoU.")
@click.option("--val-split-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="File listing held-out scenes, one per line.")
@click.option("--steps", type=click.IntRange(min=0), default=0, show_default=True,
              help="Optimisation steps (0: --epochs passes over the training scenes).")
@click.option("--epochs", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True,
              help="Passes over the training scenes when --steps is 0.")
@click.option("--crops-per-step", type=click.IntRange(min=1), default=2, show_default=True,
              help="Scene crops packed into one step's sparse tensor (a batch).")
@click.option("--max-points", type=click.IntRange(min=0), default=30000, show_default=True,
              help="Points per crop (a random spatial crop; 0 = whole scenes).")
@click.option("--optimizer", type=click.Choice(["sgd", "adam", "adamw"]), default="adamw", show_default=True,
              help="sgd: momentum 0.9 (SpatioTemporalSegmentation's recipe); adam; adamw.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=3e-3, show_default=True,
              help="Peak learning rate: linear warm-up, then poly decay (power 0.9).")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=1e-4, show_default=True)
@click.option("--warmup", type=click.IntRange(min=0), default=50, show_default=True, help="Warm-up steps.")
@click.option("--geometric-augment/--no-geometric-augment", default=True, show_default=True,
              help="Random rotation about z, scaling 0.9-1.1 and mirroring of every crop.")
@click.option("--color-augment/--no-color-augment", default=True, show_default=True,
              help="Chromatic augmentation (brightness/contrast, per-channel shift, per-point jitter).")
@click.option("--class-weights", type=click.Choice(["none", "sqrt-inverse"]), default="none", show_default=True,
              help="sqrt-inverse: each class's loss weighted by 1/sqrt(its point frequency) (mIoU counts a rare "
              "class as much as the wall).")
@click.option("--voxel-targets", type=click.Choice(["points", "first", "ignore-mixed"]), default="points",
              show_default=True, help="points: cross-entropy over points, each scored by its voxel (what 3D mIoU "
              "measures); first: one label per voxel, its first point's; ignore-mixed: as first, but voxels whose "
              "points disagree are ignored.")
@click.option("--eval-every", type=click.IntRange(min=0), default=0, show_default=True,
              help="Steps between validation scores: the learning curve in the sidecar (0: at the end only).")
@click.option("--architecture", default="Res16UNet34C", show_default=True, help="Res16UNet variant.")
@click.option("--input-features", type=click.Choice(["color", "color+offset"]), default="color", show_default=True,
              help="Each voxel's input: its RGB (MinkowskiNet's), or RGB and the mean position of its points "
              "inside the voxel (sub-voxel geometry for coarse voxels).")
@click.option("--point-head/--no-point-head", default=False, show_default=True,
              help="Score each point, not only its voxel: a small MLP over the voxel's feature and the point's own "
              "position inside the voxel and colour (ours, for coarse voxels; the cached features stay block8's).")
@click.option("--voxel-size", type=float, default=0.02, show_default=True, help="Voxel edge in metres.")
@click.option("--backend", type=click.Choice(["auto", "torch", "minkowski", "spconv"]), default="auto",
              show_default=True, help="Sparse-convolution backend ('auto': spconv on one deterministic thread "
              "where installed, else minkowski, else torch).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, ...")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of initialisation, order and crops.")
@click.option("--processes", type=click.IntRange(min=1), default=1, show_default=True,
              help="Data-parallel processes on this machine (gloo; gradients averaged, rank 0 writes). On a CPU "
              "spconv trains on one thread per process, so use one process per core.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def command(dataset: str, root: Path, out: Path, scenes: str | None, split_file: Path | None,
            extra_roots: tuple[Path, ...], val_scenes: str | None, val_split_file: Path | None, steps: int,
            epochs: float, crops_per_step: int, max_points: int, optimizer: str, lr: float, weight_decay: float,
            warmup: int, geometric_augment: bool, color_augment: bool, class_weights: str, voxel_targets: str,
            eval_every: int, architecture: str, input_features: str, point_head: bool,
            voxel_size: float, backend: str, device: str, seed: int, processes: int, quiet: bool) -> None:
    """Train the 3D teacher on ROOT's labelled scans (and any --extra-root) and save it in MinkowskiEngine's
    state_dict layout.

    With held-out scenes it reports 3D mIoU, per class, and (--eval-every) a learning curve; the checkpoint loads
    in `extract --teacher-checkpoint`, which reads the architecture and voxel size from the sidecar.

    \b
    The paper's teacher (real scans): --architecture Res16UNet34C --voxel-size 0.02 (the defaults).
    The CPU recipe of `make demo` (pipeline/recipe.py; synthetic world, ~6 min on 2 cores):
      distill-cache synth scannet rooms3d/ --scenes 200 --frames 0 --seed 1000
      distill-cache train-teacher --dataset scannet --root world/ --split-file world/scannetv2_train.txt \\
        --extra-root rooms3d/ --val-split-file world/scannetv2_val.txt --architecture Res16UNet14S \\
        --voxel-size 0.08 --input-features color+offset --point-head --steps 1200 --processes 2 \\
        --class-weights sqrt-inverse --no-geometric-augment --no-color-augment --eval-every 300 --out teacher.pth
    """
    from pipeline.allocator import keep_freed_memory
    from stages.extract.teacher.train import Augmentation, ColorAugmentation, TeacherTrainConfig

    keep_freed_memory()  # here and in the data-parallel workers it spawns
    if scenes and split_file:
        raise click.UsageError("give --scenes or --split-file, not both")
    try:
        recipe = TeacherTrainConfig(steps=steps, epochs=epochs, crops_per_step=crops_per_step, max_points=max_points,
                                    optimizer=optimizer, lr=lr, weight_decay=weight_decay, warmup_steps=warmup,
                                    voxel_targets=voxel_targets, eval_every=eval_every, seed=seed,
                                    class_weights=class_weights, color=ColorAugmentation(enabled=color_augment),
                                    geometry=Augmentation() if geometric_augment else Augmentation.off())
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    if point_head and voxel_targets != "points":
        raise click.UsageError(f"--point-head learns from points; --voxel-targets {voxel_targets} gives it none")
    if crops_per_step % processes:
        raise click.UsageError(f"--crops-per-step {crops_per_step} is not divisible by --processes {processes}")
    job = TeacherJob(dataset=dataset, root=root, out=out, scenes=_names(scenes), split_file=split_file,
                     extra_roots=extra_roots, val_names=_names(val_scenes) or _read_split(val_split_file),
                     architecture=architecture, voxel_size=voxel_size, input_features=input_features,
                     point_head=point_head, backend=backend, device=device,
                     recipe=recipe, progress=not quiet)
    report = run_processes(job, processes) if processes > 1 else job.run()
    val = report["val"]
    summary = {"checkpoint": report["checkpoint"], "checkpoint_sha256": report["checkpoint_sha256"],
               "steps": report["steps"], "train_scenes": len(report["train_scenes"]),
               "final_loss": report["final_loss"], "val_miou": val["miou"] if val else None,
               "seconds": report["seconds"],
               "val_iou": ({k: (round(v, 4) if v is not None else None) for k, v in val["iou"].items()}
                           if val else None)}
    click.echo(json.dumps(summary, indent=2))


@dataclass
class TeacherJob:
    """Everything one training process needs (each of --processes loads the scans itself)."""

    dataset: str
    root: Path
    out: Path
    scenes: list[str] | None
    split_file: Path | None
    extra_roots: tuple[Path, ...]
    val_names: list[str] | None
    architecture: str
    voxel_size: float
    input_features: str
    point_head: bool
    backend: str
    device: str
    recipe: object  # TeacherTrainConfig (imported lazily)
    progress: bool = True

    def run(self, rank: int = 0) -> dict:
        from cache_schema.labels import LABEL_SPACES
        from stages.extract.teacher import TeacherConfig
        from stages.extract.teacher.train import train_teacher

        dataset, root = self.dataset, self.root
        progress = self.progress and rank == 0
        space, train_records = _load(dataset, root, self.scenes, self.split_file, "training", progress)
        n_own = len(train_records)
        for extra in self.extra_roots:
            extra_split = extra / "scannetv2_train.txt" if dataset == "scannet" else None
            if extra_split is not None and not extra_split.is_file():
                raise click.UsageError(f"--extra-root {extra}: no scannetv2_train.txt listing its training scans")
            extra_space, records = _load(dataset, extra, None, extra_split, f"extra ({extra.name})", progress)
            if extra_space != space:
                raise click.UsageError(f"--extra-root {extra}: label space {extra_space}, ROOT's is {space}")
            train_records += records
        val_records = []
        if self.val_names:
            _, val_records = _load(dataset, root, self.val_names, None, "validation", progress)
            overlap = {r.name for r in val_records} & {r.name for r in train_records[:n_own]}
            if overlap:
                raise click.UsageError(f"scenes both trained on and held out: {', '.join(sorted(overlap))}")
        cfg = TeacherConfig(architecture=self.architecture, voxel_size=self.voxel_size,
                            input_features=self.input_features, point_head=self.point_head,
                            backend=self.backend,
                            device=self.device)
        return train_teacher(train_records, val_records, LABEL_SPACES[space], cfg, self.recipe, out=self.out,
                             progress=progress, extra_scenes=len(train_records) - n_own)


def _process(rank: int, job: TeacherJob, world: int, port: int, results) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        report = job.run(rank)
        if rank == 0:
            results.put(report)
    finally:
        dist.destroy_process_group()


def run_processes(job: TeacherJob, processes: int) -> dict:
    """Train with ``processes`` data-parallel processes on this machine (gloo over loopback); rank 0's report."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    mp.start_processes(_process, args=(job, processes, port, results), nprocs=processes, join=True,
                       start_method="spawn")
    return results.get()
