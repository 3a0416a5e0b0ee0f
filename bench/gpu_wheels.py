"""The wheels a lent GPU machine needs for `make gpu-check`, and whether a folder of them is complete for it.

    python -m bench.gpu_wheels pins          # the pinned requirements of scripts/gpu_wheels.txt, one per line
    python -m bench.gpu_wheels check .whl    # the folder against the device: exit 1 and a list of problems if any

The device (the tool library's device/README.md and KINDS.md) runs CPython 3.12 on x86-64 Linux, has no network,
and installs wheels with `pip install --no-index --no-deps`: nothing resolves a missing requirement there and two
versions of one package stop the whole install. So the check is that every wheel installs on CPython 3.12
manylinux x86-64, that each package comes in one version, that every pin of scripts/gpu_wheels.txt is there, and
that every requirement of every wheel (markers evaluated for that Python) is another wheel or a package the
device's image already has (scripts/gpu_device_packages.txt). `make gpu-wheels` (scripts/gpu_wheels.sh) downloads
and then runs this check.
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from dataclasses import dataclass, field
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename

REPO = Path(__file__).resolve().parents[1]
PINS = REPO / "scripts" / "gpu_wheels.txt"
DEVICE_PACKAGES = REPO / "scripts" / "gpu_device_packages.txt"
DEVICE_PYTHON = (3, 12)
# what the wheels may be built for: the platform tags device/README.md downloads with (glibc up to 2.28), x86-64
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in range(28, 4, -1)] + [
    "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
MARKERS = {"python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
           "platform_python_implementation": "CPython", "sys_platform": "linux", "platform_system": "Linux",
           "platform_machine": "x86_64", "os_name": "posix", "extra": ""}
CARRY_LIMIT = 64 * 2**20  # what one device call may carry, the repository's working tree included


def device_tags() -> set[Tag]:
    abi = f"cp{DEVICE_PYTHON[0]}{DEVICE_PYTHON[1]}"
    return set(cpython_tags(DEVICE_PYTHON, [abi], PLATFORMS)) | set(
        compatible_tags(DEVICE_PYTHON, abi, PLATFORMS))


def read_list(path: Path) -> list[str]:
    """Non-empty lines of a list file, without `#` comments."""
    return [ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines() if ln.split("#", 1)[0].strip()]


def pins(path: Path = PINS) -> list[Requirement]:
    out = [Requirement(p) for p in read_list(path)]
    bad = [str(r) for r in out if len(r.specifier) != 1 or next(iter(r.specifier)).operator != "=="]
    if bad:
        raise ValueError(f"{path}: every wheel must be pinned with ==, not {bad}")
    return out


def device_packages(path: Path = DEVICE_PACKAGES) -> set[str]:
    return {canonicalize_name(n) for n in read_list(path)}


@dataclass
class Wheel:
    path: Path
    name: str  # canonical
    version: str
    tags: frozenset[Tag]
    requires: list[Requirement] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path) -> Wheel:
        name, version, _, tags = parse_wheel_filename(path.name)
        with zipfile.ZipFile(path) as z:
            meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
            headers = Parser().parsestr(z.read(meta).decode("utf-8", "replace"), headersonly=True)
        return cls(path, canonicalize_name(name), str(version), tags,
                   [Requirement(r) for r in headers.get_all("Requires-Dist") or []])

    def needs(self) -> list[Requirement]:
        """The requirements that apply on the device (extras and other platforms' markers left out)."""
        return [r for r in self.requires if r.marker is None or r.marker.evaluate(MARKERS)]


def problems(folder: Path, wanted: list[Requirement] | None = None, device: set[str] | None = None) -> list[str]:
    """Everything that would stop `pip install --no-index --no-deps .whl/*.whl` and our imports on the device."""
    wanted = pins() if wanted is None else wanted
    device = device_packages() if device is None else device
    found = sorted(folder.glob("*.whl"))
    out: list[str] = []
    wheels: dict[str, list[Wheel]] = {}
    for p in found:
        try:
            w = Wheel.read(p)
        except Exception as e:  # a truncated download, a wheel without metadata
            out.append(f"{p.name}: unreadable ({type(e).__name__}: {e})")
            continue
        wheels.setdefault(w.name, []).append(w)
        if not (w.tags & device_tags()):
            out.append(f"{p.name}: not installable on CPython 3.12 manylinux x86-64 (tags "
                       f"{', '.join(sorted(map(str, w.tags)))})")
    for name, ws in wheels.items():
        if len(ws) > 1:
            out.append(f"{name}: {len(ws)} wheels ({', '.join(w.path.name for w in ws)}); keep one version")
    for req in wanted:
        have = [w.version for w in wheels.get(canonicalize_name(req.name), [])]
        if not any(req.specifier.contains(v, prereleases=True) for v in have):
            out.append(f"{req}: pinned but {'only ' + ', '.join(have) if have else 'no wheel'} in {folder}")
    for ws in wheels.values():
        for w in ws:
            for req in w.needs():
                name = canonicalize_name(req.name)
                if name in wheels:
                    if not any(req.specifier.contains(x.version, prereleases=True) for x in wheels[name]):
                        out.append(f"{w.path.name} needs {req}, but the wheel is {wheels[name][0].version}")
                elif name not in device:
                    out.append(f"{w.path.name} needs {req}: neither a wheel here nor on the device image")
    total = sum(p.stat().st_size for p in found)
    if total > CARRY_LIMIT:
        out.append(f"{total / 2**20:.1f} MiB of wheels: more than a device call may carry ({CARRY_LIMIT // 2**20} MiB)")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_wheels", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    sub.add_parser("pins", help="print the pinned requirements, one per line")
    chk = sub.add_parser("check", help="check a folder of wheels against the device")
    chk.add_argument("folder", type=Path)
    a = ap.parse_args(argv)
    if a.what == "pins":
        print("\n".join(str(r) for r in pins()))
        return 0
    found = sorted(a.folder.glob("*.whl"))
    bad = problems(a.folder)
    for line in bad:
        print(f"problem: {line}", file=sys.stderr)
    size = sum(p.stat().st_size for p in found) / 2**20
    print(f"{len(found)} wheels, {size:.1f} MiB in {a.folder}: " + ("complete for the device" if not bad else
                                                                    f"{len(bad)} problem(s)"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
