"""What `distill-cache inspect` reports: a summary of a cache, one frame's content, a coverage picture."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np

from cache_schema import LABEL_EMBEDDING, CacheReader
from cache_schema.image_codec import decode_image
from cache_schema.layout import ALL_ARRAYS, SCENES_GROUP


def _stored_bytes(reader: CacheReader, scene: str) -> dict[str, int] | None:
    group = reader.root[f"{SCENES_GROUP}/{scene}"]
    out = {}
    try:
        for name in ALL_ARRAYS:
            out[name] = int(group[name].nbytes_stored())
    except Exception:  # stores without listing (plain HTTP) cannot tell stored sizes
        return None
    return out


def summarize(reader: CacheReader) -> dict:
    m = reader.manifest
    complete = reader.complete_scenes()
    frames = cells = grid = 0
    by_array: dict[str, int] = {}
    sizes_known = True
    for s in complete:
        sc = reader.scene(s)
        frames += sc.num_frames
        cells += sc.num_cells
        grid += sc.num_frames * sc.grid_shape[0] * sc.grid_shape[1]
        b = _stored_bytes(reader, s) if sizes_known else None
        if b is None:
            sizes_known = False
            continue
        for k, v in b.items():
            by_array[k] = by_array.get(k, 0) + v
    bytes_per_frame = None
    if sizes_known and frames:
        bytes_per_frame = {k: v / frames for k, v in sorted(by_array.items())}
        bytes_per_frame["total"] = sum(by_array.values()) / frames
    stats = None
    if m.stats is not None:
        stats = {"count": m.stats.count, "mean": m.stats.mean, "var": m.stats.var}
    return {
        "url": reader.url,
        "schema_version": m.schema_version,
        "fingerprint": m.fingerprint(),
        "params_fingerprint": m.params_fingerprint(),
        "producer": m.producer,
        "dataset": {"name": m.dataset.name, "split": m.dataset.split, "label_space": m.dataset.label_space["name"],
                    "input_fingerprint": m.dataset.input_fingerprint},
        "scenes_complete": len(complete),
        "scenes_incomplete": len(reader.incomplete_scenes()),
        "incomplete": reader.incomplete_scenes(),
        "frames": frames,
        "channels": m.channels,
        "stride": m.projection.stride,
        "coverage": cells / grid if grid else 0.0,
        "cells": cells,
        "bytes_per_frame": bytes_per_frame,
        "stats": stats,
        "teacher": asdict(m.teacher) if m.teacher else None,
        "projection": asdict(m.projection),
        "encoding": asdict(m.encoding),
    }


def format_summary(s: dict) -> str:
    lines = [
        f"cache        {s['url']}",
        f"schema       v{s['schema_version']}  (producer {s['producer'].get('name', '?')} "
        f"{s['producer'].get('version', '?')})",
        f"fingerprint  {s['fingerprint']}",
        f"dataset      {s['dataset']['name']} ({s['dataset']['label_space']}, split {s['dataset']['split']})",
        f"scenes       {s['scenes_complete']} complete, {s['scenes_incomplete']} incomplete"
        + (f" ({', '.join(s['incomplete'][:5])}{'...' if len(s['incomplete']) > 5 else ''})" if s["incomplete"]
           else ""),
        f"frames       {s['frames']}   cells {s['cells']}   coverage {s['coverage']:.1%} of the stride-"
        f"{s['stride']} grid",
    ]
    t = s["teacher"]
    if t and t["architecture"] == LABEL_EMBEDDING:
        seed = t["checkpoint_sha256"].partition(":")[2]
        lines.append(f"teacher      label-embedding control ({t['channels']} ch, seed {seed}): each point's class "
                     "embedded, no network, no geometry")
    elif t:
        lines.append(f"teacher      {t['architecture']} {t['feature_layer']} ({t['channels']} ch, voxel "
                     f"{t['voxel_size']} m, {t['backend']}, weights {t['checkpoint_sha256'][:16]})")
    else:
        lines.append("teacher      none (2D-only cache)")
    p = s["projection"]
    lines.append(f"projection   stride {p['stride']}, dilation {p['dilation']}, sampling {p['sampling']}, depth check "
                 f"{'on' if p['depth_check'] else 'off'} (abs {p['depth_abs_tol']} m, rel {p['depth_rel_tol']}), "
                 f"image size {p['image_size'] or 'source'}, frame skip {p['frame_skip']}")
    e = s["encoding"]
    images = f"jpeg (quality {e['quality']})" if e["format"] == "jpeg" else e["format"]
    feats = e.get("features", "float16")
    if feats == "uint8":
        feats = "uint8 (lossy: per-scene per-channel affine code, error <= scale/2; read as float16)"
    lines.append(f"encoding     images {images}, features {feats}")
    if s["stats"]:
        mean, var = np.asarray(s["stats"]["mean"]), np.asarray(s["stats"]["var"])
        lines.append(f"statistics   {s['stats']['count']} cells; mean in [{mean.min():.3f}, {mean.max():.3f}], "
                     f"std in [{np.sqrt(var.min()):.3f}, {np.sqrt(var.max()):.3f}]")
    else:
        lines.append("statistics   none")
    if s["bytes_per_frame"]:
        b = s["bytes_per_frame"]
        lines.append(f"bytes/frame  {b['total'] / 1e3:.1f} KB total: "
                     + ", ".join(f"{k} {v / 1e3:.1f} KB" for k, v in b.items() if k != "total" and v >= 50))
    else:
        lines.append("bytes/frame  unknown (the store cannot list sizes)")
    return "\n".join(lines)


def dump_frame(reader: CacheReader, scene: str, frame: int) -> dict[str, np.ndarray]:
    sc = reader.scene(scene)
    f = sc.read_frame(frame)
    image = decode_image(f.image, f.image_size, reader.manifest.encoding.format)
    return {"image": np.ascontiguousarray(image), "labels": f.labels, "grid_shape": np.asarray(sc.grid_shape),
            "cells": f.cells, "features": f.features, "point_index": f.point_index, "point_labels": f.point_labels,
            "depth": f.depth, "intrinsics": f.intrinsics, "pose": f.pose, "frame_id": np.asarray(f.frame_id)}


def pca_colors(features: np.ndarray) -> np.ndarray:
    """(n, 3) uint8 colours from the first three principal components of the features (as Figure 9)."""
    x = features.astype(np.float64)
    if x.shape[0] < 2 or x.shape[1] == 0:
        return np.full((x.shape[0], 3), 255, np.uint8)
    x = x - x.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    comps = x @ vt[: min(3, vt.shape[0])].T
    if comps.shape[1] < 3:
        comps = np.pad(comps, ((0, 0), (0, 3 - comps.shape[1])))
    lo, hi = np.percentile(comps, 2, axis=0), np.percentile(comps, 98, axis=0)
    return (np.clip((comps - lo) / np.maximum(hi - lo, 1e-9), 0, 1) * 255).astype(np.uint8)


def render_coverage(reader: CacheReader, scene: str, frame: int) -> np.ndarray:
    """RGB picture: the frame with each covered cell drawn as a PCA-coloured square, and a legend line."""
    import cv2

    d = dump_frame(reader, scene, frame)
    img = (d["image"].astype(np.float32) * 0.6).astype(np.uint8)
    gh, gw = d["grid_shape"]
    k = reader.manifest.projection.stride
    colors = pca_colors(d["features"])
    half = max(1, k // 3)
    rows, cols = d["cells"] // gw, d["cells"] % gw
    h, w = img.shape[:2]
    for (r, c), col in zip(zip(rows, cols, strict=True), colors, strict=True):
        y, x = int(r) * k, int(c) * k
        img[max(0, y - half): min(h, y + half + 1), max(0, x - half): min(w, x + half + 1)] = col
    legend = np.full((22, w, 3), 255, np.uint8)
    n, total = len(d["cells"]), int(gh * gw)
    text = f"{scene} frame {int(d['frame_id'])}: {n}/{total} cells covered ({n / max(total, 1):.1%}), PCA of features"
    cv2.putText(legend, text, (4, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([img, legend], axis=0)
