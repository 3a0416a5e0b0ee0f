"""The procedural indoor world that stands in for ScanNet / S3DIS / NYU-v2 (see world.py)."""

from .style import STYLES, Style, get_style
from .world import (
    KINDS,
    CameraSetup,
    SyntheticScene,
    WorldSummary,
    camera_setup,
    generate_world,
    make_scene,
    nyu40_to_s3dis13,
)

__all__ = ["KINDS", "STYLES", "CameraSetup", "Style", "SyntheticScene", "WorldSummary", "camera_setup",
           "generate_world", "get_style", "make_scene", "nyu40_to_s3dis13"]
