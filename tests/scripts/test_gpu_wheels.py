"""`make gpu-wheels`' check (bench/gpu_wheels.py), without a network: a folder of wheels is complete for the lent GPU
machine only if each installs on its CPython 3.12, comes in one version, and needs nothing the machine lacks; and
the pinned list itself is closed over what the machine has (read from the same versions installed here)."""

from __future__ import annotations

import importlib
import importlib.metadata as md
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
gpu_wheels = importlib.import_module("bench.gpu_wheels")


def wheel(folder: Path, name: str, version: str, *requires: str, tag: str = "py3-none-any") -> Path:
    """A minimal wheel: its file name and the METADATA that pip and the check read."""
    path = folder / f"{name}-{version}-{tag}.whl"
    meta = "Metadata-Version: 2.1\nName: {}\nVersion: {}\n{}\n".format(
        name, version, "".join(f"Requires-Dist: {r}\n" for r in requires))
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}-{version}.dist-info/METADATA", meta)
        z.writestr(f"{name}/__init__.py", "")
    return path


PINS = [Requirement("alpha==1.0"), Requirement("beta==2.0")]
DEVICE = {"numpy", "typing-extensions"}


def test_a_complete_folder(tmp_path):
    wheel(tmp_path, "alpha", "1.0", "beta>=2", "numpy>=1.24", "Typing_Extensions",  # names normalized
          'importlib-metadata>=4; python_version < "3.12"',  # not for the device's Python
          'pytest; extra == "test"', 'pywin32; sys_platform == "win32"')
    wheel(tmp_path, "beta", "2.0", tag="cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64")
    assert gpu_wheels.problems(tmp_path, PINS, DEVICE) == []


def test_what_would_break_the_install_or_the_imports(tmp_path):
    wheel(tmp_path, "alpha", "1.0", "beta>=3", "gamma")
    wheel(tmp_path, "beta", "2.0", tag="cp311-cp311-manylinux_2_17_x86_64")  # another Python
    wheel(tmp_path, "beta", "2.1")  # a second version of one package
    wheel(tmp_path, "delta", "1.0", tag="py3-none-macosx_11_0_arm64")
    (tmp_path / "broken-1.0-py3-none-any.whl").write_bytes(b"not a zip")
    found = "\n".join(gpu_wheels.problems(tmp_path, PINS + [Requirement("epsilon==1.0")], DEVICE))
    assert "beta-2.0-cp311-cp311-manylinux_2_17_x86_64.whl: not installable on CPython 3.12" in found
    assert "delta-1.0-py3-none-macosx_11_0_arm64.whl: not installable" in found
    assert "beta: 2 wheels" in found
    assert "alpha-1.0-py3-none-any.whl needs beta>=3, but the wheel is" in found
    assert "needs gamma: neither a wheel here nor on the device image" in found
    assert "epsilon==1.0: pinned but no wheel" in found
    assert "broken-1.0-py3-none-any.whl: unreadable" in found


def test_the_pinned_list_is_closed_over_the_device_image():
    """Every requirement of every pin (read from the same version installed here, which is what the tests run
    with) is another pin or a package the device's image has: a dependency added without its own is caught here,
    not on a lent GPU."""
    pins = gpu_wheels.pins()
    pinned = {canonicalize_name(r.name) for r in pins}
    device = gpu_wheels.device_packages()
    assert {"numpy", "torch", "torchvision", "opencv-python-headless", "pytest", "click", "pyyaml"} <= device
    assert not pinned & device  # a pin the image already has would install a second copy beside it
    checked = 0
    for req in pins:
        try:
            installed = md.version(req.name)
        except md.PackageNotFoundError:
            continue
        if not req.specifier.contains(installed, prereleases=True):
            continue  # another version here: its requirements may differ from the pinned wheel's
        for text in md.requires(req.name) or []:
            need = Requirement(text)
            if need.marker is not None and not need.marker.evaluate(gpu_wheels.MARKERS):
                continue
            assert canonicalize_name(need.name) in pinned | device, f"{req} needs {need}"
        checked += 1
    if checked < len(pins) // 2:
        pytest.skip(f"only {checked} of {len(pins)} pinned versions are installed here")


def test_pins_must_be_exact(tmp_path):
    path = tmp_path / "pins.txt"
    path.write_text("# comment\nzarr==3.1.6  # why\n\ndask>=2024\n")
    with pytest.raises(ValueError, match="pinned with =="):
        gpu_wheels.pins(path)
