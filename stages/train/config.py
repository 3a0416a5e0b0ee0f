"""Stage two's training configuration: typed sections with the paper's defaults, YAML in, `key.sub=value` overrides.

The defaults are the paper's (§4 "Implementation details"): SGD, momentum 0.9, weight decay 1e-4, batch 16,
lr 0.01 with the poly policy (power 0.9), 10× lr on the newly added heads, PSPNet-50, crop 473, scale 0.5-2,
rotation ±10°, flip, loss weights L_s 1 / L_p 0.03 / L_adv 0.01. `configs/default.yaml` spells them out;
`configs/tiny.yaml` is a seconds-long CPU run for tests and demos.

Every key is checked: an unknown key (in YAML or in an override) is an error that names it and lists the
section's valid keys, so a typo never silently trains with a default.
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
MODES = ("baseline", "paired", "unpaired", "multitask")


class ConfigError(ValueError):
    """A configuration that cannot be used: unknown key, wrong type, invalid value."""


@dataclass
class ModelConfig:
    depth: int = 50  # ResNet depth of PSPNet's backbone: 18 | 34 | 50 | 101
    norm: str = "dn"  # dn | bn: DimensionNorm or BatchNorm in the distillation branch (Table 7)
    aux: bool = True  # PSPNet's auxiliary head on layer3
    pretrained: str | None = None  # path of an ImageNet deep-stem ResNet state_dict (never downloaded)
    sync_bn: bool = True  # DDP: DN statistics all-reduced on any backend; BN -> SyncBatchNorm on CUDA only
    # multiplier of every PSPNet width (backbone stem and planes, f2d, aux head; multiples of 8): a CPU run keeps
    # the architecture at ~width² of the cost. 1.0 is the paper's network and the only width ImageNet weights fit
    width: float = 1.0
    # conv: Conv3 of Figure 3 (3x3 conv+BN+ReLU over concat(f2d, calibrated f3d_sim)) before the classifier, as
    # the authors' release does | linear: the concatenation goes straight to dropout + the 1x1 classifier
    fusion: str = "conv"
    # f2d: Conv1 reads f2d, the 2D feature the paper's text and Figure 2 give the branch | ppm: it reads the
    # pyramid-pooling context with a 512-wide first conv, as the authors' release does (+42 % MACs at PSPNet-50)
    branch_input: str = "f2d"
    # Conv2 ends with a ReLU: the paper does not say; the teacher's cached features (block8) are post-ReLU, so >= 0,
    # and the release ends Conv2 with a ReLU, so true. false: a plain 1x1 conv (f3d_sim may go negative)
    conv2_relu: bool = True


@dataclass
class DataConfig:
    batch_size: int = 16  # per step, over all processes (each rank loads batch_size / world_size)
    crop: int = 473
    scale: tuple[float, float] = (0.5, 2.0)
    rotate: float = 10.0  # degrees, ±
    flip: bool = True
    block_frames: int = 16
    shuffle_buffer_blocks: int = 8
    workers: int = 2
    prefetch_batches: int = 4


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd (the paper's, momentum below) | adamw (for a backbone trained from scratch)
    lr: float = 0.01
    warmup: int = 0  # iterations of linear warm-up before the poly decay (the paper: none)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    power: float = 0.9  # poly schedule: lr·(1 − it/iters)^power
    head_lr_mult: float = 10.0  # PPM, classifier, auxiliary head, distillation branch
    disc_lr: float = 1e-4  # discriminators (unpaired mode): Adam; the paper does not give its settings
    disc_betas: tuple[float, float] = (0.9, 0.99)


@dataclass
class LossWeights:
    """The loss weights (the paper's values); the one definition losses.py and the config share."""

    seg: float = 1.0
    aux: float = 0.4
    paired: float = 0.03  # L_p (Eq. 1)
    adv: float = 0.01  # L_adv(Φ2D) (Eq. 4)
    depth: float = 0.03  # Multitask baseline; the paper gives no value, we reuse L_p's
    depth_kind: str = "l2"  # l2 | l1


@dataclass
class LossConfig(LossWeights):
    disc: str = "per-class"  # per-class | shared (SAAL ablation, Table 7)
    class_weights: str = "none"  # none (the paper) | sqrt-inverse: L_s weighted by 1/sqrt(pixel frequency)
    # samples per class and batch fed to a discriminator; the shared one draws up to max_per_class × classes from one
    # class-agnostic pool (the same ceiling)
    max_per_class: int = 256


@dataclass
class ScheduleConfig:
    iters: int | None = None  # total iterations; None = epochs × batches per epoch
    epochs: float = 50.0  # ScanNet-v2: 50, S3DIS: 20, NYU-v2: 300 (paper §4)


@dataclass
class LogConfig:
    every: int = 20  # iterations per log.csv row
    checkpoint_every: int = 1000  # iterations between checkpoints (one is always written at the end)
    keep_checkpoints: bool = False  # also keep iter_XXXXXXX.pt beside last.pt
    tensorboard: bool = True  # only if torch.utils.tensorboard imports
    progress: bool = True  # tqdm bar on stderr
    # the validation curve: iterations between scores of the student on `train --val-cache` (0: only at the end,
    # and only when a validation cache is given); rows in val.csv, the protocol of `evaluate` at val_scales
    val_every: int = 0
    val_scales: tuple[float, ...] = (1.0,)


@dataclass
class TrainConfig:
    mode: str = "paired"  # baseline | paired | unpaired | multitask
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto (bf16 if supported on CUDA, else off) | bf16 | fp16 | off
    # NHWC activations and weights: with amp bf16 on AMX CPUs a narrow student's step is 1.2-1.7x faster
    channels_last: bool = False
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower; for exact-resume checks)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def validate(self) -> TrainConfig:
        checks = [
            (self.mode in MODES, f"mode must be one of {MODES}, got {self.mode!r}"),
            (self.model.depth in (18, 34, 50, 101), f"model.depth must be 18/34/50/101, got {self.model.depth}"),
            (self.model.norm in ("dn", "bn"), f"model.norm must be 'dn' or 'bn', got {self.model.norm!r}"),
            (self.model.width > 0, f"model.width must be > 0, got {self.model.width}"),
            (self.model.fusion in ("conv", "linear"), f"model.fusion must be conv|linear, got {self.model.fusion!r}"),
            (self.model.branch_input in ("f2d", "ppm"),
             f"model.branch_input must be f2d|ppm, got {self.model.branch_input!r}"),
            (self.model.pretrained is None or self.model.width == 1.0,
             f"model.pretrained (ImageNet weights) fits only model.width 1.0, got width {self.model.width}"),
            (self.amp in ("auto", "bf16", "fp16", "off"), f"amp must be auto/bf16/fp16/off, got {self.amp!r}"),
            (self.data.batch_size >= 1, f"data.batch_size must be >= 1, got {self.data.batch_size}"),
            (self.data.crop >= 16, f"data.crop must be >= 16, got {self.data.crop}"),
            (0 < self.data.scale[0] <= self.data.scale[1], f"data.scale must be 0 < lo <= hi, got {self.data.scale}"),
            (self.optim.lr > 0, f"optim.lr must be > 0, got {self.optim.lr}"),
            (self.optim.name in ("sgd", "adamw"), f"optim.name must be sgd|adamw, got {self.optim.name!r}"),
            (self.optim.warmup >= 0, f"optim.warmup must be >= 0, got {self.optim.warmup}"),
            (self.loss.disc in ("per-class", "shared"), f"loss.disc must be per-class|shared, got {self.loss.disc!r}"),
            (self.loss.class_weights in ("none", "sqrt-inverse"),
             f"loss.class_weights must be none|sqrt-inverse, got {self.loss.class_weights!r}"),
            (self.loss.depth_kind in ("l1", "l2"), f"loss.depth_kind must be l1|l2, got {self.loss.depth_kind!r}"),
            (self.schedule.iters is None or self.schedule.iters >= 1,
             f"schedule.iters must be >= 1, got {self.schedule.iters}"),
            (self.schedule.epochs > 0, f"schedule.epochs must be > 0, got {self.schedule.epochs}"),
            (self.log.every >= 1 and self.log.checkpoint_every >= 1, "log.every and log.checkpoint_every must be >= 1"),
            (self.log.val_every >= 0, f"log.val_every must be >= 0, got {self.log.val_every}"),
            (len(self.log.val_scales) >= 1 and all(x > 0 for x in self.log.val_scales),
             f"log.val_scales must be positive scales, got {self.log.val_scales}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self

    def to_dict(self) -> dict[str, Any]:
        return _plain(asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Any) -> TrainConfig:
        return _build(cls, d, "").validate()

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        return cls.from_dict(json.loads(text))


def _plain(v: Any) -> Any:
    """Tuples become lists so that JSON/YAML round trips compare equal."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    return v


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check (and mildly convert: int→float, list→tuple, number→str path) a value against a field's type."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is tuple:
        args = typing.get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]: any length
            if not isinstance(value, list | tuple):
                raise ConfigError(f"{where}: expected a list of values, got {value!r}")
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ConfigError(f"{where}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if isinstance(value, bool):  # YAML 1.1 reads a bare off/on as a boolean: amp: off
            return "on" if value else "off"
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported field type {annotation!r}")


def _build(cls: type, d: Any, prefix: str) -> Any:
    if not isinstance(d, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(d) - set(known))
    if unknown:
        where = f" in section '{prefix.rstrip('.')}'" if prefix else ""
        raise ConfigError(f"unknown config key(s) {', '.join(prefix + str(k) for k in unknown)}{where}; "
                          f"valid keys: {', '.join(sorted(known))}")
    kwargs = {}
    for name, value in d.items():
        hint = hints[name]
        if is_dataclass(hint):
            kwargs[name] = _build(hint, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, hint, f"{prefix}{name}")
    return cls(**kwargs)


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | Path | None = None) -> TrainConfig:
    """`configs/default.yaml` (the paper's settings), with the given YAML file's keys on top of it."""
    base = _read_yaml(CONFIG_DIR / "default.yaml")
    if path is not None:
        base = _merge(base, _read_yaml(Path(path)))
    try:
        return TrainConfig.from_dict(base)
    except ConfigError as e:
        raise ConfigError(f"{path or CONFIG_DIR / 'default.yaml'}: {e}") from None


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections, got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """'optim.lr=0.02' → (['optim', 'lr'], 0.02); the value is parsed as YAML (numbers, true/false, null, lists)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {e}") from None
    return key.strip().split("."), value


def apply_overrides(cfg: TrainConfig, overrides: list[str] | dict[str, Any]) -> TrainConfig:
    """A new config with `key.sub=value` overrides applied (strings or a {dotted key: value} mapping)."""
    d = cfg.to_dict()
    items = overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides)
    for key, value in items:
        path = key.split(".") if isinstance(key, str) else key
        node = d
        for i, part in enumerate(path[:-1]):
            if not isinstance(node.get(part), dict):
                sections = ", ".join(k for k, v in d.items() if isinstance(v, dict))
                raise ConfigError(f"unknown config section {'.'.join(path[: i + 1])!r} in override "
                                  f"{'.'.join(path)}; sections: {sections}")
            node = node[part]
        if path[-1] not in node:
            raise ConfigError(f"unknown config key {'.'.join(path)!r}; valid keys here: {', '.join(sorted(node))}")
        node[path[-1]] = value
    return TrainConfig.from_dict(d)


def config_differences(a: TrainConfig, b: TrainConfig) -> list[str]:
    """'key: old -> new' for every leaf that differs."""
    out: list[str] = []

    def walk(x: dict, y: dict, prefix: str) -> None:
        for k in sorted(set(x) | set(y)):
            u, v = x.get(k), y.get(k)
            if isinstance(u, dict) and isinstance(v, dict):
                walk(u, v, f"{prefix}{k}.")
            elif u != v:
                out.append(f"{prefix}{k}: {u!r} -> {v!r}")

    walk(a.to_dict(), b.to_dict(), "")
    return out
