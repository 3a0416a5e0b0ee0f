"""Teacher backends: time of the 3D teacher's per-point features on one synthetic room, per sparse-conv backend.

Builds one synthetic room mesh (``make_scene(0, 0).mesh()``, ~80k vertices at the default 5 cm spacing), then runs
``Teacher.point_features`` (voxelize at 2 cm, Res16UNet34C to ``block8``, features back to points) with the same
random weights (``init="random", seed=0``) on every available backend (``minkowski``, ``torch``, ``spconv``).
The backends are timed round-robin (one call each per round, after one warm-up call each) so that the machine's
drifting load hits them alike; each figure is the median over the rounds. Reports seconds, points/s, the time
ratio of each backend to ``torch`` and the largest absolute feature difference from ``torch`` (same weights, so
the backends must agree up to float rounding). Prints one JSON line.

    .venv/bin/python -m bench.bench_teacher [--spacing 0.05] [--repeats 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np

from bench.common import emit


def room(spacing: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) float32 points and (N, 3) uint8 colours of one synthetic room's mesh vertices."""
    from stages.extract.synthetic import make_scene

    mesh = make_scene(seed, 0, frames=1).mesh(vertex_spacing=spacing)
    return np.ascontiguousarray(mesh.vertices, np.float32), np.ascontiguousarray(mesh.colors, np.uint8)


def run(spacing: float = 0.05, repeats: int = 5, warmup: int = 1, device: str = "cpu",
        backends: list[str] | None = None, architecture: str = "Res16UNet34C") -> dict:
    import torch

    from stages.extract.teacher import TeacherConfig, available_backends, load_teacher
    from stages.extract.teacher.teacher import MAX_STRIDE
    from stages.extract.teacher.voxelize import voxelize

    points, colors = room(spacing)
    cfg = TeacherConfig(architecture=architecture)
    voxels = int(voxelize(points, cfg.voxel_size, align=MAX_STRIDE).coords.shape[0])
    versions = available_backends()
    wanted = backends or list(versions)
    out: dict = {"name": "teacher", "device": device, "torch_threads": torch.get_num_threads(),
                 "points": int(points.shape[0]), "voxels": voxels, "vertex_spacing_m": spacing,
                 "voxel_size_m": cfg.voxel_size, "architecture": cfg.architecture, "layer": cfg.layer,
                 "repeats": repeats, "warmup": warmup, "backends": {}}
    teachers, features = {}, {}
    for b in wanted:
        version = versions.get(b, f"unavailable: unknown backend {b!r}")
        if version.startswith("unavailable"):
            out["backends"][b] = {"status": version}
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # MinkowskiEngine's CPU_ONLY notice
                teacher = load_teacher(TeacherConfig(architecture=architecture, backend=b, device=device),
                                       init="random", seed=0)
            for _ in range(max(warmup, 1)):  # the warm-up call also gives the features compared below
                features[b] = teacher.point_features(points, colors)
        except Exception as e:  # a backend that cannot run here is reported, not fatal to the others
            out["backends"][b] = {"status": f"failed: {type(e).__name__}: {e}", "version": version}
            continue
        teachers[b] = teacher
        out["backends"][b] = {"status": "ok", "version": version, "channels": int(features[b].shape[1])}
    times: dict[str, list[float]] = {b: [] for b in teachers}
    for _ in range(repeats):
        for b, teacher in teachers.items():  # round-robin: drifting load hits every backend alike
            t = time.perf_counter()
            teacher.point_features(points, colors)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times[b].append(time.perf_counter() - t)
    for b, ts in times.items():
        med = statistics.median(ts)
        out["backends"][b].update({"seconds": med, "seconds_all": ts, "points_per_s": points.shape[0] / med,
                                   "us_per_point": 1e6 * med / points.shape[0]})
    ref = "torch" if "torch" in times else next(iter(times), None)
    out["reference_backend"] = ref
    if ref is not None:
        t_ref = out["backends"][ref]["seconds"]
        out["feature_abs_max"] = float(np.abs(features[ref]).max())
        for b in times:
            out["backends"][b]["time_ratio_vs_reference"] = out["backends"][b]["seconds"] / t_ref
            out["backends"][b]["max_abs_diff_vs_reference"] = float(np.abs(features[b] - features[ref]).max())
        out["fastest"] = min(times, key=lambda b: out["backends"][b]["seconds"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spacing", type=float, default=0.05,
                    help="mesh vertex spacing in metres (0.05: ~80k points, 0.06: ~58k)")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds (median); >= 5 for reported figures")
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls per backend first")
    ap.add_argument("--device", default="cpu", help="torch device of the teacher (cpu, cuda)")
    ap.add_argument("--backends", default="", help="comma list (default: every known backend)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave as is)")
    ap.add_argument("--architecture", default="Res16UNet34C", help="Res16UNet variant (smaller ones for smoke runs)")
    a = ap.parse_args()
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    emit(run(a.spacing, a.repeats, a.warmup, a.device, [b for b in a.backends.split(",") if b] or None,
             a.architecture))


if __name__ == "__main__":
    main()
