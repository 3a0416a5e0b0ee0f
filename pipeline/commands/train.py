"""`distill-cache train`: stage two, the 2D student trained purely from a cache."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

# CLI option → config key; only options the user actually gives override the config file
_OPTION_KEYS = {
    "mode": "mode", "iters": "schedule.iters", "epochs": "schedule.epochs", "batch_size": "data.batch_size",
    "crop": "data.crop", "lr": "optim.lr", "depth": "model.depth", "norm": "model.norm", "disc": "loss.disc",
    "pretrained": "model.pretrained", "device": "device", "seed": "seed", "checkpoint_every": "log.checkpoint_every",
    "workers": "data.workers", "amp": "amp", "width": "model.width", "val_every": "log.val_every",
}


@click.command("train")
@click.option("--cache", required=True, help="Cache to train from (path or URL). In --mode unpaired: the 2D image "
              "cache (e.g. NYU-v2 ingested without features).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Run directory: last.pt, log.csv, config.json (and tb/ if TensorBoard is installed).")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="YAML config; its keys override stages/train/configs/default.yaml (the paper's settings).")
@click.option("--feature-cache", help="--mode unpaired: the cache holding the 3D features (positives of the "
              "discriminators and DN1's statistics).")
@click.option("--val-cache", help="Validation cache (e.g. the val split, made like --cache): the student is scored on "
              "it during training with evaluate's protocol (log.val_scales, default whole frames at scale 1) and the "
              "learning curve goes to val.csv. Scores at the end, and every --val-every iterations.")
@click.option("--val-every", type=click.IntRange(min=0), help="Iterations between validation scores (needs "
              "--val-cache; 0: at the end only). [config: 0]")
@click.option("--mode", type=click.Choice(["baseline", "paired", "unpaired", "multitask"]),
              help="baseline: PSPNet; paired: L_s + 0.03 L_p; unpaired: L_s + 0.01 L_adv with per-class "
              "discriminators; multitask: the branch regresses depth (Table 2). [config: paired]")
@click.option("--iters", type=click.IntRange(min=1), help="Total iterations (default: schedule.epochs over the cache).")
@click.option("--epochs", type=click.FloatRange(min=0, min_open=True), help="Epochs when --iters is not given.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Frames per step over all processes. [config: 16]")
@click.option("--crop", type=click.IntRange(min=16), help="Square training crop in pixels. [config: 473]")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Base learning rate (poly decay). [0.01]")
@click.option("--depth", type=click.Choice(["18", "34", "50", "101"]), help="ResNet depth of PSPNet. [config: 50]")
@click.option("--width", type=click.FloatRange(min=0, min_open=True),
              help="Multiplier of PSPNet's widths (backbone, f2d, aux head), e.g. 0.25 for CPU runs; ImageNet "
              "weights need 1.0. [config: 1.0]")
@click.option("--norm", type=click.Choice(["dn", "bn"]), help="DimensionNorm or BatchNorm in the branch (Table 7).")
@click.option("--disc", type=click.Choice(["per-class", "shared"]),
              help="Semantic-aware per-class discriminators or one shared (ablation).")
@click.option("--pretrained", type=click.Path(exists=True, dir_okay=False, resolve_path=True),
              help="ImageNet deep-stem ResNet state_dict for the backbone (loaded with weights_only=True).")
@click.option("--device", help="auto | cpu | cuda | cuda:N. Under torchrun each process uses cuda:LOCAL_RANK.")
@click.option("--amp", type=click.Choice(["auto", "bf16", "fp16", "off"]), help="Mixed precision (CUDA). [auto]")
@click.option("--seed", type=int, help="Seed of initialisation, shuffling, augmentation and dropout. [0]")
@click.option("--workers", type=click.IntRange(min=0), help="Loader prefetch workers per process. [config: 2]")
@click.option("--checkpoint-every", type=click.IntRange(min=1), help="Iterations between checkpoints. [1000]")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Any config key, e.g. --set optim.momentum=0.95 --set data.scale=[0.75,1.5] (repeatable).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last.pt exactly (its config, "
              "with any options given here applied on top).")
@click.option("--force", is_flag=True, help="Resume even though the cache's fingerprint differs from the one "
              "recorded in the checkpoint.")
@click.option("--stop-after", type=click.IntRange(min=1), hidden=True,
              help="Stop (with a checkpoint) after this many iterations, as an interruption would.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout at the end.")
def command(cache, out, config_file, feature_cache, val_cache, resume, force, stop_after, quiet, as_json, overrides,
            **options):
    """Train the 2D student (PSPNet + the 3D-to-2D distillation branch) from CACHE only, on CPU, one GPU, or
    several processes under torchrun (e.g. `torchrun --nproc-per-node 4 -m pipeline.cli train ...`)."""
    from cache_schema import CacheError
    from pipeline.allocator import keep_freed_memory
    from stages.train.checkpoint import CheckpointError, ProvenanceError
    from stages.train.config import ConfigError, apply_overrides, load_config
    from stages.train.trainer import TrainError, resume_config, train

    keep_freed_memory()  # before torch allocates: a step's large buffers are reused, not page-faulted in again
    given = {_OPTION_KEYS[k]: (int(v) if k == "depth" else v) for k, v in options.items() if v is not None}
    if quiet:
        given["log.progress"] = False
    try:
        if resume:
            cfg = resume_config(out)
            if config_file is not None:
                cfg = apply_overrides(cfg, _flatten(load_config(config_file).to_dict(), only=_yaml_keys(config_file)))
        else:
            cfg = load_config(config_file)
        cfg = apply_overrides(cfg, list(overrides))
        cfg = apply_overrides(cfg, given)
        result = train(cfg, cache, out, feature_cache=feature_cache, val_cache=val_cache, resume=resume,
                       force=force, stop_after=stop_after)
    except (CacheError, ConfigError, CheckpointError, ProvenanceError, TrainError) as e:
        raise click.ClickException(str(e)) from e
    if result.checkpoint is None:  # a non-zero rank under torchrun: rank 0 reports
        return
    summary = {"run_dir": str(result.run_dir), "iterations": result.iterations, "total_iters": result.total_iters,
               "checkpoint": str(result.checkpoint), "log": str(result.log_csv), "last": result.last,
               "peak_gpu_memory_mb": result.peak_gpu_memory_mb,
               "val_curve": [{k: r[k] for k in ("iter", "miou", "macc", "pixel_accuracy", "seconds")}
                             for r in result.val_curve]}
    if as_json:
        click.echo(json.dumps(summary))
    else:
        terms = ", ".join(f"{k} {v:.4g}" for k, v in result.last.items()
                          if k in ("loss", "seg", "paired", "depth", "adv_g", "adv_d"))
        click.echo(f"{result.iterations}/{result.total_iters} iterations; {terms}; checkpoint {result.checkpoint}",
                   file=sys.stdout)


def _yaml_keys(path: Path) -> set[str]:
    import yaml

    return set(_flatten(yaml.safe_load(path.read_text()) or {}))


def _flatten(d: dict, prefix: str = "", only: set[str] | None = None) -> dict:
    out: dict = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{key}.", only))
        elif only is None or key in only:
            out[key] = v
    return out
