"""Teacher checkpoints: MinkowskiEngine-named state_dicts, read without unpickling and matched strictly."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from cache_schema.fingerprint import file_sha256


def sidecar_path(checkpoint: str | Path) -> Path:
    """Where `train-teacher` writes a checkpoint's JSON sidecar (config, metrics, sha256): CKPT + ".json"."""
    path = Path(checkpoint)
    return path.with_name(path.name + ".json")


class CheckpointMismatchError(ValueError):
    """A state_dict that does not fit the network exactly; lists every offending key."""

    def __init__(self, source: str, missing: list[str], unexpected: list[str],
                 misshaped: list[tuple[str, tuple, tuple]]):
        self.missing, self.unexpected, self.misshaped = missing, unexpected, misshaped
        lines = [f"checkpoint {source} does not match the network:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {', '.join(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
        for k, got, want in misshaped:
            lines.append(f"  mis-shaped {k}: checkpoint {list(got)}, network {list(want)}")
        super().__init__("\n".join(lines))


def checkpoint_sha256(path: Path) -> str:
    return file_sha256(path)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A bare state_dict or ``{"state_dict": ...}`` from ``.pth``/``.pt`` (weights_only) or ``.safetensors``.

    A ``module.`` prefix (DataParallel) is stripped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"teacher checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        if importlib.util.find_spec("safetensors") is None:
            raise RuntimeError(f"{path}: reading .safetensors needs the 'safetensors' package (pip install it)")
        from safetensors.torch import load_file

        obj: object = load_file(str(path), device="cpu")
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # weights_only refuses pickled objects: say so rather than fall back to pickle
            raise ValueError(f"{path}: not a plain tensor checkpoint readable with weights_only=True ({e})") from e
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a state_dict (mapping of names to tensors), got {type(obj).__name__}")
    out: dict[str, torch.Tensor] = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor")
        out[k.removeprefix("module.")] = v
    return out


def load_state_dict_strict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "<state_dict>") -> None:
    """Load ``state`` into ``model`` only if names and shapes match exactly; otherwise list every difference."""
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    misshaped = [(k, tuple(state[k].shape), tuple(own[k].shape)) for k in sorted(own)
                 if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or misshaped:
        raise CheckpointMismatchError(source, missing, unexpected, misshaped)
    model.load_state_dict(dict(state), strict=True)


def save_teacher_checkpoint(model_state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Write a bare state_dict (CPU tensors) readable with ``weights_only=True``; ``.safetensors`` if so named."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k.removeprefix("module."): v.detach().cpu().contiguous() for k, v in model_state.items()}
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(tmp))
    else:
        torch.save(state, tmp)
    tmp.replace(path)  # atomic: a crashed save never leaves a truncated checkpoint under the real name
