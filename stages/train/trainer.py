"""Stage two's training loop: the student learns from the cache only (paper §3, Figure 2).

Modes (``TrainConfig.mode``):
- ``baseline``: PSPNet, L = L_s (+0.4 aux).
- ``paired``: L = L_s + 0.03·L_p, L_p on the cells the cache covers (``Batch.features`` at ``feature_mask``);
  DN1's target statistics are the cache's global feature statistics.
- ``multitask``: Table 2's "Multitask" baseline: the same branch regresses the cached depth on covered cells.
- ``unpaired``: ``cache`` holds the 2D images (e.g. NYU-v2 ingested without features), ``feature_cache`` the 3D
  features (e.g. ScanNet). Φ2D and the discriminators {D_c} are trained alternately each iteration: Φ2D with
  L_s + 0.01·L_adv(Φ2D) (Eq. 4) against fixed D_c, then the D_c with Eq. 3 against the (detached) f3d_sim of that
  step: positives are cached 3D features of category c (``features`` at ``feature_mask``, class from
  ``feature_labels``), negatives f3d_sim at 1/8-grid cells whose 2D label is c. DN1 takes the feature cache's
  statistics.

Engineering: SGD with poly decay and 10× lr on the new heads; AMP on CUDA (bf16, or fp16 with a GradScaler);
DistributedDataParallel when launched by ``torchrun`` (env RANK/WORLD_SIZE/LOCAL_RANK; nccl on CUDA, gloo on CPU;
the loader shards frames by rank; only rank 0 writes); atomic checkpoints every N iterations and at the end,
with everything needed to continue exactly (``resume=True``); provenance checks against the cache; CSV (and
TensorBoard if importable) logs with data-wait time.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from cache_schema import CacheReader, LabelSpace, open_cache
from cache_schema.labels import IGNORE, sqrt_inverse_weights
from stages.train.batch import Batch
from stages.train.checkpoint import (
    CacheProvenance,
    Checkpoint,
    CheckpointError,
    ProvenanceError,
    capture_rng,
    encode_state,
    load_checkpoint,
    provenance_problems,
    restore_rng,
    save_checkpoint,
)
from stages.train.config import TrainConfig, config_differences
from stages.train.losses import (
    LossWeights,
    SemanticAwareAdversarialLoss,
    labels_at_cells,
    paired_objective,
    segmentation_loss,
)
from stages.train.model.dimension_norm import DimensionNorm
from stages.train.model.student import Student, StudentConfig, StudentOutput

LAST_CHECKPOINT = "last.pt"
VAL_LOG = "val.csv"  # the learning curve on --val-cache: one row per score
LOG_COLUMNS = ("iter", "epoch", "loss", "seg", "paired", "depth", "adv_g", "adv_d", "lr", "data_time", "step_time",
               "data_wait_frac", "frames_per_s")


class TrainError(RuntimeError):
    """A training run that cannot start or go on (bad inputs, run directory conflicts, diverged loss)."""


# ----------------------------------------------------------------------------------------------------------------
# distributed environment


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # we initialised the process group (and destroy it at the end)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistEnv:
    """Join the process group `torchrun` describes in the environment; a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    owns = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="env://")
        owns = True
    return DistEnv(rank=rank, world_size=world, local_rank=local, owns_group=owns)


def resolve_device(spec: str) -> torch.device:
    """'auto' → cuda:LOCAL_RANK if CUDA is available, else cpu."""
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainError(f"device {spec!r} requested but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    return device


def resolve_amp(spec: str, device: torch.device) -> torch.dtype | None:
    if spec == "off" or (spec == "auto" and device.type != "cuda"):
        return None
    if spec == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if spec == "fp16" and device.type != "cuda":
        raise TrainError("amp fp16 needs CUDA (use amp: bf16 or off on CPU)")
    return torch.bfloat16 if spec == "bf16" else torch.float16


# ----------------------------------------------------------------------------------------------------------------
# the run


@dataclass
class TrainResult:
    run_dir: Path
    iterations: int  # iterations completed (== total unless stopped early)
    total_iters: int
    checkpoint: Path | None  # last.pt (rank 0)
    log_csv: Path | None
    last: dict[str, float] = field(default_factory=dict)  # loss terms of the last log interval
    peak_gpu_memory_mb: float | None = None  # this process's peak allocated CUDA memory during run(); None on CPU
    val_curve: list[dict[str, float]] = field(default_factory=list)  # val.csv's rows (rank 0, with --val-cache)


@dataclass
class _Interval:
    """Sums over one logging interval (loss terms stay on the device until the row is written)."""

    iters: int = 0
    frames: int = 0
    data_time: float = 0.0
    step_time: float = 0.0
    terms: dict[str, torch.Tensor] = field(default_factory=dict)

    def add(self, terms: dict[str, torch.Tensor | None], frames: int, data_time: float, step_time: float) -> None:
        self.iters += 1
        self.frames += frames
        self.data_time += data_time
        self.step_time += step_time
        for k, v in terms.items():
            if v is not None:
                v = v.detach().float()
                self.terms[k] = self.terms[k] + v if k in self.terms else v


def student_config_for(cfg: TrainConfig, num_classes: int, feature_channels: int) -> StudentConfig:
    mode = cfg.mode
    return StudentConfig(
        depth=cfg.model.depth, num_classes=num_classes,
        feature_channels=0 if mode == "baseline" else feature_channels,
        norm=cfg.model.norm, aux=cfg.model.aux, multitask_depth=mode == "multitask",
        pretrained=Path(cfg.model.pretrained) if cfg.model.pretrained else None, width=cfg.model.width,
        fusion=cfg.model.fusion, branch_input=cfg.model.branch_input, conv2_relu=cfg.model.conv2_relu)


def student_config_to_json(sc: StudentConfig) -> str:
    d = asdict(sc)
    d["pretrained"] = None if sc.pretrained is None else str(sc.pretrained)
    return json.dumps(d, sort_keys=True)


# Model settings added after checkpoints were first written, each with the value such a checkpoint was trained
# with where today's default differs: a checkpoint that lacks the key rebuilds the model it holds.
LEGACY_MODEL_SETTINGS: dict[str, Any] = {"fusion": "linear", "conv2_relu": False}


def student_config_from_json(text: str) -> StudentConfig:
    d = {**LEGACY_MODEL_SETTINGS, **json.loads(text)}
    d["pretrained"] = None  # the checkpoint carries the trained weights; the ImageNet file is not needed again
    return StudentConfig(**d)


def checkpoint_train_config(ckpt: Checkpoint) -> TrainConfig:
    """The TrainConfig a checkpoint was trained with (older checkpoints: the model settings of their time)."""
    d = json.loads(ckpt.config_json)
    d["model"] = {**LEGACY_MODEL_SETTINGS, **d.get("model", {})}
    return TrainConfig.from_dict(d)


def resume_config(run_dir: str | Path) -> TrainConfig:
    """The configuration a run was started with (from RUN/last.pt), to resume it."""
    return checkpoint_train_config(load_checkpoint(Path(run_dir) / LAST_CHECKPOINT))


def head_parameter_groups(student: Student, cfg: TrainConfig) -> list[dict[str, Any]]:
    """The pretrained backbone at the base lr, every newly added head (PPM, f2d conv, classifier, auxiliary head,
    distillation branch) at head_lr_mult × (PSPNet's recipe)."""
    backbone, heads = [], []
    for name, p in student.named_parameters():
        (backbone if name.startswith("pspnet.backbone.") else heads).append(p)
    return [{"params": backbone, "lr_mult": 1.0, "lr": cfg.optim.lr},
            {"params": heads, "lr_mult": cfg.optim.head_lr_mult, "lr": cfg.optim.lr * cfg.optim.head_lr_mult}]


CLASS_COUNT_FRAMES = 2000  # label maps read to estimate class frequencies (a cache of any size costs at most this)


def label_counts(reader, label_space: LabelSpace, max_frames: int = CLASS_COUNT_FRAMES) -> np.ndarray:
    """Pixels per training id over up to ``max_frames`` label maps of the cache's complete scenes, spread evenly."""
    scenes = [reader.scene(name) for name in reader.complete_scenes()]
    total = sum(sc.num_frames for sc in scenes)
    step = max(1, math.ceil(total / max_frames))
    lut = label_space.lookup_table()
    counts = np.zeros(label_space.num_classes, np.int64)
    for sc in scenes:
        labels = np.asarray(sc.arrays["labels"][::step])
        ids = lut[labels].ravel()
        counts += np.bincount(ids[ids != IGNORE].astype(np.int64), minlength=label_space.num_classes)[
            :label_space.num_classes]
    return counts


def poly_factor(iteration: int, total: int, power: float, warmup: int = 0) -> float:
    """The learning-rate factor: linear warm-up over ``warmup`` iterations, then poly decay to 0 at ``total``."""
    if iteration < warmup:
        return (iteration + 1) / warmup
    span = max(1, total - warmup)
    return (1.0 - min(iteration - warmup, span) / span) ** power


class Trainer:
    """One training run. Build it, then ``run()``; ``stop_after`` ends early after that many iterations (with a
    checkpoint), as an interruption would."""

    def __init__(self, cfg: TrainConfig, cache: str | Path, out: str | Path, *, feature_cache: str | Path | None = None,
                 val_cache: str | Path | None = None, resume: bool = False, force: bool = False,
                 echo: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg.validate()
        self.out = Path(out)
        self.resume, self.force = resume, force
        self.echo = echo or (lambda msg: print(msg, file=sys.stderr))
        self.device = resolve_device(cfg.device)
        self.env = init_distributed(self.device)
        self.amp_dtype = resolve_amp(cfg.amp, self.device)
        self.ckpt: Checkpoint | None = self._load_resume_checkpoint() if resume else None
        if not resume and self.env.is_main and (self.out / LAST_CHECKPOINT).exists():
            raise TrainError(f"{self.out} already holds a run ({LAST_CHECKPOINT}); pass --resume to continue it or "
                             "choose another --out")
        self._per_rank_batch()  # fail early on a batch size the processes cannot share
        self.reader, self.feature_reader = self._open_caches(cache, feature_cache)
        self._check_provenance()
        self.label_space = LabelSpace.from_json(self.reader.manifest.dataset.label_space)
        self.val_reader = self._open_val_cache(val_cache)
        self._seed()
        self.student_config = self._student_config()
        self.student = Student(self.student_config).to(self.device)
        if cfg.channels_last:
            self.student = self.student.to(memory_format=torch.channels_last)
        self._set_target_stats()
        self.loader = self._make_loader(self.reader)
        self.feature_loader = self._make_loader(self.feature_reader) if self.feature_reader is not None else None
        if len(self.loader) == 0:
            raise TrainError(f"{self.reader.url}: no full batch of {self._per_rank_batch()} frames per process "
                             f"({self.env.world_size} processes); lower data.batch_size")
        if self.feature_loader is not None and len(self.feature_loader) == 0:
            raise TrainError(f"{self.feature_reader.url}: no full batch for the feature loader")
        self.total_iters = cfg.schedule.iters or max(1, math.ceil(cfg.schedule.epochs * len(self.loader)))
        self.weights: LossWeights = cfg.loss  # LossConfig is LossWeights plus the discriminator settings
        self.class_weight = self._class_weight()
        groups = head_parameter_groups(self.student, cfg)
        if cfg.optim.name == "adamw":
            self.optimizer: torch.optim.Optimizer = torch.optim.AdamW(groups, lr=cfg.optim.lr,
                                                                      weight_decay=cfg.optim.weight_decay)
        else:
            self.optimizer = torch.optim.SGD(groups, lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                                             weight_decay=cfg.optim.weight_decay)
        self.adversarial: SemanticAwareAdversarialLoss | None = None
        self.disc_optimizer: torch.optim.Optimizer | None = None
        if cfg.mode == "unpaired":
            self.adversarial = SemanticAwareAdversarialLoss(
                self.label_space.num_classes, self.student_config.feature_channels, shared=cfg.loss.disc == "shared",
                max_per_class=cfg.loss.max_per_class).to(self.device)
            self.disc_optimizer = torch.optim.Adam(self.adversarial.parameters(), lr=cfg.optim.disc_lr,
                                                   betas=cfg.optim.disc_betas)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        # sampling of adversarial cells uses its own generator so that it is checkpointed with the run
        self.sample_gen = torch.Generator().manual_seed(cfg.seed * 1000 + self.env.rank)
        self.iteration = 0
        if self.ckpt is not None:
            self._restore(self.ckpt)
        self.model: nn.Module = self._wrap_ddp(self.student)

    # -- setup ---------------------------------------------------------------------------------------------------

    def _class_weight(self) -> torch.Tensor | None:
        """``loss.class_weights: sqrt-inverse``: weights from the training cache's label maps (up to
        ``CLASS_COUNT_FRAMES`` frames, evenly spread over its scenes); ``none`` (the paper's): None."""
        if self.cfg.loss.class_weights == "none":
            return None
        counts = label_counts(self.reader, self.label_space)
        w = sqrt_inverse_weights(counts)
        if self.env.is_main:
            top = ", ".join(f"{n} {v:.2f}" for n, v in zip(self.label_space.names, w, strict=True))
            self.echo(f"class weights (sqrt-inverse pixel frequency): {top}")
        return torch.as_tensor(w, dtype=torch.float32, device=self.device)

    def _load_resume_checkpoint(self) -> Checkpoint:
        path = self.out / LAST_CHECKPOINT
        if not path.exists():
            raise TrainError(f"--resume: {path} does not exist (nothing to resume)")
        ckpt = load_checkpoint(path, map_location="cpu")
        saved = checkpoint_train_config(ckpt)
        changed = config_differences(saved, self.cfg)
        fixed = [c for c in changed if c.startswith(("mode:", "model.", "seed:"))]
        if fixed:  # the model's shape and the data order are the checkpoint's: these cannot change mid-run
            raise TrainError(f"--resume: {path} was trained with other settings that a resumed run cannot change: "
                             + "; ".join(fixed))
        if changed and self.env.is_main:
            self.echo("resume: configuration changed since the checkpoint: " + "; ".join(changed))
        return ckpt

    def _open_caches(self, cache: str | Path, feature_cache: str | Path | None) -> tuple[CacheReader,
                                                                                         CacheReader | None]:
        mode = self.cfg.mode
        reader = open_cache(cache)
        if not reader.complete_scenes():
            raise TrainError(f"{reader.url}: no complete scene to train on")
        if mode in ("paired", "multitask") and reader.manifest.channels == 0:
            raise TrainError(f"{reader.url} holds no 3D features (a 2D-only cache): mode {mode!r} needs paired "
                             "features; use --mode baseline, or --mode unpaired with --feature-cache")
        if mode != "unpaired":
            if feature_cache is not None:
                raise TrainError(f"--feature-cache is only used by --mode unpaired (mode is {mode!r})")
            return reader, None
        if feature_cache is None:
            raise TrainError("--mode unpaired needs --feature-cache (the cache holding the 3D features)")
        freader = open_cache(feature_cache)
        if freader.manifest.channels == 0:
            raise TrainError(f"--feature-cache {freader.url} holds no 3D features")
        a, b = (LabelSpace.from_json(r.manifest.dataset.label_space) for r in (reader, freader))
        if a.ids != b.ids:
            raise TrainError(f"the image cache's label space {a.name} ({a.num_classes} classes) and the feature "
                             f"cache's {b.name} ({b.num_classes}) differ: the semantic-aware discriminators pair "
                             "categories by training id, so both caches must share one label space")
        return reader, freader

    def _open_val_cache(self, val_cache: str | Path | None) -> CacheReader | None:
        """The validation cache of the learning curve (rank 0 scores it), made like the training cache."""
        if val_cache is None:
            if self.cfg.log.val_every:
                raise TrainError(f"log.val_every is {self.cfg.log.val_every} but no validation cache is given "
                                 "(--val-cache)")
            return None
        reader = open_cache(val_cache)
        if not reader.complete_scenes():
            raise TrainError(f"--val-cache {reader.url}: no complete scene to score")
        # the parameters' fingerprint covers the label space, teacher, projection and encoding
        problems = provenance_problems(CacheProvenance.of(self.reader), reader, scope="params")
        if problems:
            raise TrainError(f"--val-cache {reader.url} was made differently from the training cache:\n  "
                             + "\n  ".join(problems))
        return reader if self.env.is_main else None

    def _check_provenance(self) -> None:
        if self.ckpt is None:
            return
        problems = provenance_problems(self.ckpt.cache, self.reader)
        if self.feature_reader is not None:
            fp = provenance_problems(self.ckpt.feature_cache, self.feature_reader)
            problems += [f"feature cache: {p}" for p in fp]
        if not problems:
            return
        text = "\n  ".join(problems)
        if not self.force:
            raise ProvenanceError(f"refusing to resume on a different cache (pass --force to override):\n  {text}")
        if self.env.is_main:
            self.echo(f"warning: resuming on a different cache (--force):\n  {text}")

    def _seed(self) -> None:
        seed = self.cfg.seed
        torch.manual_seed(seed)  # identical initial weights on every rank (DDP also broadcasts rank 0's)
        np.random.seed(seed + self.env.rank)
        if self.cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    def _student_config(self) -> StudentConfig:
        if self.ckpt is not None:
            sc = student_config_from_json(self.ckpt.student_config_json)
            return sc  # the resumed model's shape is the checkpoint's
        features = self.feature_reader if self.feature_reader is not None else self.reader
        return student_config_for(self.cfg, self.label_space.num_classes, features.manifest.channels)

    def _set_target_stats(self) -> None:
        if not self.student.needs_target_stats:
            return
        source = self.feature_reader if self.feature_reader is not None else self.reader
        mean, var = source.global_stats()
        if mean.shape[0] != self.student_config.feature_channels:
            raise TrainError(f"{source.url}: global statistics have {mean.shape[0]} channels, the cache "
                             f"{self.student_config.feature_channels}")
        self.student.set_target_stats(torch.from_numpy(mean).float(), torch.from_numpy(var).float())

    def _per_rank_batch(self) -> int:
        b, w = self.cfg.data.batch_size, self.env.world_size
        if b % w:
            raise TrainError(f"data.batch_size {b} is not divisible by the {w} processes")
        if b // w < 2:  # BatchNorm after the PPM's 1x1 bin sees one value per channel and sample
            raise TrainError(f"data.batch_size {b} over {w} processes leaves {b // w} frame per process; PSPNet's "
                             "BatchNorm needs at least 2 per process")
        return b // w

    def _make_loader(self, reader: CacheReader):
        from stages.train.loader import CacheLoader, LoaderConfig  # the loader package pulls in cv2 and threads

        d = self.cfg.data
        lcfg = LoaderConfig(batch_size=self._per_rank_batch(), crop=d.crop, scale=d.scale, rotate=d.rotate,
                            flip=d.flip, train=True, block_frames=d.block_frames,
                            shuffle_buffer_blocks=d.shuffle_buffer_blocks, workers=d.workers,
                            prefetch_batches=d.prefetch_batches, seed=self.cfg.seed, drop_last=True)
        return CacheLoader(reader, lcfg, device=self.device, rank=self.env.rank, world_size=self.env.world_size)

    def _wrap_ddp(self, student: Student) -> nn.Module:
        if not self.env.enabled:
            return student
        if self.cfg.model.sync_bn:
            # DN's batch statistics are all-reduced on any backend; BN's only on CUDA (SyncBatchNorm needs it)
            for m in student.modules():
                if isinstance(m, DimensionNorm):
                    m.sync = True
        if self.device.type == "cuda" and self.cfg.model.sync_bn:
            student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
            self.student = student
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(student, device_ids=ids)

    # -- checkpoints ---------------------------------------------------------------------------------------------

    def _rng_states(self) -> dict[str, torch.Tensor]:
        """Every rank's RNG states (gathered to rank 0), so that a resumed DDP run continues exactly too."""
        mine = capture_rng({"sample": self.sample_gen})
        if not self.env.enabled:
            return mine
        gathered: list[dict[str, torch.Tensor] | None] = [None] * self.env.world_size
        dist.all_gather_object(gathered, {k: v.cpu() for k, v in mine.items()})
        return {f"rank{r}:{k}": v for r, states in enumerate(gathered) for k, v in (states or {}).items()}

    def _restore(self, ckpt: Checkpoint) -> None:
        try:
            self.student.load_state_dict(ckpt.model)
            self.optimizer.load_state_dict(ckpt.optimizer)
            if self.adversarial is not None:
                if ckpt.discriminators is None:
                    raise CheckpointError("the checkpoint has no discriminators (was it an unpaired run?)")
                self.adversarial.load_state_dict(ckpt.discriminators)
                self.disc_optimizer.load_state_dict(ckpt.disc_optimizer)
            if ckpt.scaler:
                self.scaler.load_state_dict(ckpt.scaler)
        except (RuntimeError, ValueError, KeyError) as e:
            raise TrainError(f"{self.out / LAST_CHECKPOINT}: does not fit this run's model/optimizer: {e}") from e
        try:
            self.loader.load_state_dict(ckpt.loader_state)
            if self.feature_loader is not None and ckpt.feature_loader_state is not None:
                self.feature_loader.load_state_dict(ckpt.feature_loader_state)
        except (ValueError, KeyError) as e:
            raise TrainError(f"{self.out / LAST_CHECKPOINT}: the loader position cannot be restored: {e}") from e
        self.iteration = ckpt.iteration
        self.total_iters = self.cfg.schedule.iters or ckpt.total_iters
        rng = ckpt.rng
        prefix = f"rank{self.env.rank}:"
        if self.env.enabled and ckpt.world_size == self.env.world_size:
            rng = {k[len(prefix):]: v for k, v in rng.items() if k.startswith(prefix)}
        elif self.env.enabled or ckpt.world_size != 1:
            if self.env.is_main:
                self.echo(f"resume: world size changed ({ckpt.world_size} -> {self.env.world_size}); RNG streams are "
                          "re-seeded, so the continuation is not bit-exact")
            torch.manual_seed(self.cfg.seed + 7919 * ckpt.iteration + self.env.rank)
            return
        restore_rng(rng, {"sample": self.sample_gen})

    def save(self, path: Path | None = None) -> Path | None:
        rng = self._rng_states()  # collective under DDP: every rank calls save()
        if not self.env.is_main:
            return None
        ckpt = Checkpoint(
            iteration=self.iteration, total_iters=self.total_iters, config_json=self.cfg.to_json(),
            student_config_json=student_config_to_json(self.student_config),
            model=self.student.state_dict(), optimizer=self.optimizer.state_dict(),
            discriminators=self.adversarial.state_dict() if self.adversarial is not None else None,
            disc_optimizer=self.disc_optimizer.state_dict() if self.disc_optimizer is not None else None,
            scaler=self.scaler.state_dict() if self.scaler.is_enabled() else None,
            loader_state_json=encode_state(self.loader.state_dict()),
            feature_loader_state_json=(encode_state(self.feature_loader.state_dict())
                                       if self.feature_loader is not None else None),
            rng=rng, cache=CacheProvenance.of(self.reader),
            feature_cache=CacheProvenance.of(self.feature_reader) if self.feature_reader is not None else None,
            world_size=self.env.world_size)
        target = save_checkpoint(path or self.out / LAST_CHECKPOINT, ckpt)
        if self.cfg.log.keep_checkpoints and path is None:
            save_checkpoint(self.out / f"iter_{self.iteration:07d}.pt", ckpt)
        return target

    # -- one iteration -------------------------------------------------------------------------------------------

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _forward(self, image: torch.Tensor) -> StudentOutput:
        if self.cfg.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            out = self.model(image)
        if self.amp_dtype is not None:  # losses in float32: squared feature errors overflow/underflow in 16 bits
            out = StudentOutput(**{k: (v.float() if isinstance(v, torch.Tensor) else v) for k, v in vars(out).items()})
        return out

    def _set_lr(self) -> float:
        factor = poly_factor(self.iteration, self.total_iters, self.cfg.optim.power, self.cfg.optim.warmup)
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.optim.lr * group["lr_mult"] * factor
        return self.cfg.optim.lr * factor

    def _backward_step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def step(self, batch: Batch, feature_batch: Batch | None = None) -> dict[str, torch.Tensor | None]:
        """One optimisation step; returns the loss terms (device tensors, detached)."""
        self.model.train()
        out = self._forward(batch.image)
        if self.cfg.mode == "unpaired":
            return self._unpaired_step(out, batch, feature_batch)
        if self.cfg.mode == "baseline":
            seg = segmentation_loss(out.logits, batch.labels, out.aux_logits, self.weights.aux, self.class_weight)
            total, terms = self.weights.seg * seg, {"seg": seg}
        else:
            lt = paired_objective(out, batch, self.weights, self.class_weight)
            total, terms = lt.total, {"seg": lt.seg, "paired": lt.paired, "depth": lt.depth}
        self._check_finite(total)
        self._backward_step(total)
        return {"loss": total.detach(), **{k: (v.detach() if v is not None else None) for k, v in terms.items()}}

    def _unpaired_step(self, out: StudentOutput, batch: Batch, feature_batch: Batch | None) -> dict[str, Any]:
        assert self.adversarial is not None and self.disc_optimizer is not None and feature_batch is not None
        adv = self.adversarial
        # Φ2D step against fixed discriminators (Eq. 4): negatives are f3d_sim at cells labelled c in 2D
        seg = segmentation_loss(out.logits, batch.labels, out.aux_logits, self.weights.aux, self.class_weight)
        cell_labels = labels_at_cells(batch.labels, tuple(out.f3d_sim.shape[-2:]))
        fake, fake_cls = adv.sample(out.f3d_sim, cell_labels, generator=self.sample_gen)
        adv_g = adv.generator_loss(fake, fake_cls)
        total = self.weights.seg * seg + self.weights.adv * adv_g
        self._check_finite(total)
        self._backward_step(total)
        # discriminator step (Eq. 3) with Φ2D fixed: positives are the feature cache's cached 3D features
        real_cls = torch.where(feature_batch.feature_mask, feature_batch.feature_labels,
                               torch.full_like(feature_batch.feature_labels, IGNORE))
        real, real_cls = adv.sample(feature_batch.features.float(), real_cls, generator=self.sample_gen)
        adv_d = adv.discriminator_loss(real, real_cls, fake.detach(), fake_cls)
        self.disc_optimizer.zero_grad(set_to_none=True)
        adv_d.backward()
        self._average_disc_grads()
        self.disc_optimizer.step()
        return {"loss": total.detach(), "seg": seg.detach(), "adv_g": adv_g.detach(), "adv_d": adv_d.detach()}

    def _average_disc_grads(self) -> None:
        """The discriminators are small and outside DDP: average their gradients across ranks by hand."""
        if not self.env.enabled:
            return
        for p in self.adversarial.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
            p.grad.div_(self.env.world_size)

    def _check_finite(self, loss: torch.Tensor) -> None:
        if not bool(torch.isfinite(loss)):
            raise TrainError(f"loss is {float(loss)} at iteration {self.iteration + 1}; the last good checkpoint is "
                             f"{self.out / LAST_CHECKPOINT} (lower --lr, or check the cache with `distill-cache "
                             "verify`)")

    # -- the loop ------------------------------------------------------------------------------------------------

    @staticmethod
    def _batches(loader) -> Iterator[Batch]:
        """Endless batches: each pass yields the rest of the loader's current epoch (a resumed one continues at
        its position), after which the loader has moved on to the next epoch by itself."""
        while True:
            yield from loader

    def _open_logs(self):
        if not self.env.is_main:
            return None, None
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2, sort_keys=True) + "\n")
        path = self.out / "log.csv"
        rows: list[list[str]] = []
        if self.resume and path.exists():  # drop rows logged after the checkpoint we resume from
            with open(path, newline="") as f:
                rows = [r for r in csv.reader(f)][1:]
            rows = [r for r in rows if r and r[0].isdigit() and int(r[0]) <= self.iteration]
        f = open(path, "w", newline="")  # noqa: SIM115  (kept open for the run)
        writer = csv.writer(f)
        writer.writerow(LOG_COLUMNS)
        writer.writerows(rows)
        f.flush()
        tb = None
        if self.cfg.log.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                tb = SummaryWriter(str(self.out / "tb"), purge_step=self.iteration + 1 if self.resume else None)
            except ImportError:
                self.echo("TensorBoard logging is off: torch.utils.tensorboard does not import (pip install "
                          "tensorboard); log.csv has the same figures")
        return (f, writer), tb

    def _open_val_log(self) -> tuple[Path, list[dict[str, float]]] | None:
        """val.csv of the learning curve; a resumed run keeps the rows up to its checkpoint."""
        if self.val_reader is None:
            return None
        path = self.out / VAL_LOG
        rows: list[dict[str, float]] = []
        if self.resume and path.exists():
            with open(path, newline="") as f:
                rows = [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]
            rows = [r for r in rows if r.get("iter", math.inf) <= self.iteration]
        self._write_val_log(path, rows)
        return path, rows

    def _write_val_log(self, path: Path, rows: list[dict[str, float]]) -> None:
        columns = ["iter", "miou", "macc", "pixel_accuracy", "frames", "seconds",
                   *(f"iou_{n}" for n in self.label_space.names)]
        tmp = path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            writer.writerows([[_fmt(r.get(c)) for c in columns] for r in rows])
        os.replace(tmp, path)

    def validate(self) -> dict[str, float]:
        """Score the current student on the validation cache with `evaluate`'s protocol (whole frames at
        ``log.val_scales``, no flip, compared at the benchmark size) and return the row of val.csv. Eval mode, no
        gradient, no draw from any training random stream: a run with a curve trains exactly as one without."""
        from stages.train.evaluate import EvalConfig, resolve_compare_size, score_frames

        assert self.val_reader is not None
        t0 = time.perf_counter()
        ecfg = EvalConfig(scales=tuple(self.cfg.log.val_scales), workers=self.cfg.data.workers)  # evaluate's batches
        was_training = self.student.training
        self.student.eval()
        # as `evaluate` runs a checkpoint: in float32 and NCHW, so the curve's last point is `evaluate`'s figure
        # (bf16 or NHWC arithmetic rounds differently and flips a few argmaxes)
        if self.cfg.channels_last:
            self.student.to(memory_format=torch.contiguous_format)
        try:
            scores, frames = score_frames(lambda x: self.student(x).logits.float(), self.val_reader,
                                          self.label_space, ecfg.inference(self.cfg.data.crop),
                                          resolve_compare_size(ecfg.compare_size, self.label_space),
                                          device=self.device, batch_size=ecfg.batch_size, workers=ecfg.workers,
                                          progress=False)
        finally:
            self.student.train(was_training)
            if self.cfg.channels_last:
                self.student.to(memory_format=torch.channels_last)
        row = {"iter": float(self.iteration), "miou": scores.miou, "macc": scores.macc,
               "pixel_accuracy": scores.pixel_accuracy, "frames": float(frames),
               "seconds": time.perf_counter() - t0}
        row.update({f"iou_{n}": float(v) for n, v in zip(self.label_space.names, scores.iou, strict=True)})
        return row

    def run(self, stop_after: int | None = None) -> TrainResult:
        from tqdm import tqdm

        cfg = self.cfg
        csv_log, tb = self._open_logs()
        val_log = self._open_val_log()
        frames_per_step = self._per_rank_batch() * self.env.world_size
        bar = tqdm(total=self.total_iters, initial=self.iteration, desc=f"train {cfg.mode}", unit="it",
                   file=sys.stderr, dynamic_ncols=True, disable=not (self.env.is_main and cfg.log.progress))
        batches = self._batches(self.loader)
        features = self._batches(self.feature_loader) if self.feature_loader is not None else None
        interval, last = _Interval(), {}
        stop = self.total_iters if stop_after is None else min(self.total_iters, stop_after)
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        lr = self._set_lr()
        try:
            if self.env.is_main:
                width = "" if self.student_config.width == 1.0 else f" width {self.student_config.width:g}"
                self.echo(f"training {cfg.mode} PSPNet-{cfg.model.depth}{width} ({self.label_space.num_classes} "
                          f"classes) on {self.device} x{self.env.world_size}: iterations {self.iteration}->{stop} of "
                          f"{self.total_iters}, {len(self.loader)} batches/epoch, run dir {self.out}")
            while self.iteration < stop:
                t0 = time.perf_counter()
                batch = next(batches)
                feature_batch = next(features) if features is not None else None
                t1 = time.perf_counter()
                lr = self._set_lr()
                terms = self.step(batch, feature_batch)
                self.iteration += 1
                t2 = time.perf_counter()
                interval.add(terms, frames_per_step, t1 - t0, t2 - t1)
                bar.update(1)
                if self.iteration % cfg.log.every == 0 or self.iteration == stop:
                    last = self._log_row(interval, lr, csv_log, tb, bar)
                    interval = _Interval()
                # score before the checkpoint: a run killed in between resumes from the previous one and scores again
                due = self.iteration == self.total_iters or (cfg.log.val_every and
                                                             self.iteration % cfg.log.val_every == 0)
                if val_log is not None and due:
                    row = self.validate()
                    val_log[1].append(row)
                    self._write_val_log(*val_log)
                    tqdm.write(f"validation at iteration {self.iteration}: mIoU {100 * row['miou']:.2f}, pixel "
                              f"accuracy {100 * row['pixel_accuracy']:.2f} ({row['seconds']:.1f} s)", file=sys.stderr)
                    if tb is not None:
                        for k in ("miou", "macc", "pixel_accuracy"):
                            tb.add_scalar(f"val/{k}", row[k], self.iteration)
                if self.iteration % cfg.log.checkpoint_every == 0 or self.iteration == stop:
                    self.save()
        finally:
            bar.close()
            if csv_log is not None:
                csv_log[0].close()
            if tb is not None:
                tb.close()
            self.close()
        ckpt_path = self.out / LAST_CHECKPOINT if self.env.is_main else None
        peak = torch.cuda.max_memory_allocated(self.device) / 2**20 if cuda else None
        return TrainResult(run_dir=self.out, iterations=self.iteration, total_iters=self.total_iters,
                           checkpoint=ckpt_path, log_csv=self.out / "log.csv" if self.env.is_main else None, last=last,
                           peak_gpu_memory_mb=peak, val_curve=list(val_log[1]) if val_log is not None else [])

    def _log_row(self, iv: _Interval, lr: float, csv_log, tb, bar) -> dict[str, float]:
        n = max(iv.iters, 1)
        keys = sorted(iv.terms)
        sums = torch.stack([iv.terms[k] for k in keys]) if keys else torch.zeros(0, device=self.device)
        if self.env.enabled:  # the logged losses are the mean over all processes
            dist.all_reduce(sums)
            sums = sums / self.env.world_size
        values = dict(zip(keys, (sums / n).tolist(), strict=True))  # one device sync per interval
        elapsed = iv.data_time + iv.step_time
        timing = {"lr": lr, "data_time": iv.data_time / n, "step_time": iv.step_time / n,
                  "data_wait_frac": iv.data_time / elapsed if elapsed > 0 else 0.0,
                  "frames_per_s": iv.frames / elapsed if elapsed > 0 else 0.0}
        epoch = self.loader.state_dict().get("epoch", "")
        row = {"iter": self.iteration, "epoch": epoch, **values, **timing}
        if csv_log is not None:
            f, writer = csv_log
            writer.writerow([_fmt(row.get(c)) for c in LOG_COLUMNS])
            f.flush()
        if tb is not None:
            for k, v in {**values, **timing}.items():
                tb.add_scalar(k if k in timing else f"loss/{k}", v, self.iteration)
        bar.set_postfix(loss=f"{values.get('loss', float('nan')):.4f}", fps=f"{timing['frames_per_s']:.1f}",
                        wait=f"{100 * timing['data_wait_frac']:.0f}%")
        return {**values, **timing}

    def close(self) -> None:
        for loader in (self.loader, self.feature_loader):
            if loader is not None:
                loader.close()
        if self.env.enabled:
            dist.barrier()
            if self.env.owns_group:
                dist.destroy_process_group()


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def train(cfg: TrainConfig, cache: str | Path, out: str | Path, *, feature_cache: str | Path | None = None,
          val_cache: str | Path | None = None, resume: bool = False, force: bool = False,
          stop_after: int | None = None, echo: Callable[[str], None] | None = None) -> TrainResult:
    """Build a Trainer and run it to the end (or to ``stop_after`` iterations)."""
    return Trainer(cfg, cache, out, feature_cache=feature_cache, val_cache=val_cache, resume=resume, force=force,
                   echo=echo).run(stop_after=stop_after)
