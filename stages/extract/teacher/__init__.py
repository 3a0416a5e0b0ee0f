"""The 3D teacher: Res16UNet34C on interchangeable sparse-convolution backends, checkpoint I/O, training."""

from .backends import available_backends, get_ops, resolve_backend
from .checkpoint import (
                         CheckpointMismatchError,
                         checkpoint_sha256,
                         load_state_dict_strict,
                         read_state_dict,
                         save_teacher_checkpoint,
)
from .network import ARCHITECTURES, FEATURE_LAYERS, Res16UNet
from .teacher import Teacher, TeacherConfig, load_teacher

__all__ = [
    "ARCHITECTURES", "FEATURE_LAYERS", "CheckpointMismatchError", "Res16UNet", "Teacher", "TeacherConfig",
    "available_backends", "checkpoint_sha256", "get_ops", "load_state_dict_strict", "load_teacher",
    "read_state_dict", "resolve_backend", "save_teacher_checkpoint",
]
