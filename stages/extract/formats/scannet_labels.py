"""ScanNet's label table, split lists and 3D aggregation files: readers and writers side by side.

The table (FORMATS.md, "Labels and splits"): CRLF line ends, a header and one row per raw ScanNet category, 17
tab-separated columns. Two of them matter here: ``id`` (the value in 2D ``label-filt`` PNGs) and ``raw_category``
(the string in ``aggregation.json``), both mapped to ``nyu40id``. Ids can repeat (51 ids in the real file; 107,
188 and 385 with different ``nyu40id``); ScanNet's own converter builds a dict row by row, so the last row wins.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cache_schema.labels import NYU40_NAMES

from .errors import FormatError
from .records import MeshRecord

log = logging.getLogger(__name__)

LABEL_TABLE_NAME = "scannetv2-labels.combined.tsv"
TABLE_COLUMNS = ("id", "raw_category", "category", "count", "nyu40id", "eigen13id", "nyuClass", "nyu40class",
                 "eigen13class", "ModelNet40", "ModelNet10", "ShapeNetCore55", "synsetoffset", "wnsynsetid",
                 "wnsynsetkey", "mpcat40", "mpcat40index")
NUM_NYU40 = 40


@dataclass
class LabelRow:
    """One row of the table; the columns we never read are kept as text so that a written table is complete."""

    id: int
    raw_category: str
    nyu40id: int
    category: str = ""
    count: int = 0
    extra: dict[str, str] = field(default_factory=dict)  # the other 12 columns by header name

    def cells(self) -> list[str]:
        known = {"id": str(self.id), "raw_category": self.raw_category, "category": self.category or self.raw_category,
                 "count": str(self.count), "nyu40id": str(self.nyu40id)}
        return [known.get(c, self.extra.get(c, "")) for c in TABLE_COLUMNS]


@dataclass
class LabelTable:
    """The raw ScanNet id / raw category → NYU40 id maps, duplicates resolved last-row-wins."""

    id_to_nyu40: dict[int, int]
    raw_to_nyu40: dict[str, int]
    rows: list[LabelRow] = field(default_factory=list)
    path: str = ""

    @classmethod
    def from_rows(cls, rows: Iterable[LabelRow], path: str = "") -> LabelTable:
        rows = list(rows)
        # dict assignment in file order: the last duplicate wins, as in ScanNet's converter
        return cls(id_to_nyu40={r.id: r.nyu40id for r in rows}, raw_to_nyu40={r.raw_category: r.nyu40id for r in rows},
                   rows=rows, path=path)

    def lut(self, max_id: int | None = None) -> np.ndarray:
        """A uint8 lookup ``lut[raw_id] = nyu40id`` of length ``max_id + 1`` (default: 65536, any 16-bit image).

        Ids the table does not know, and NYU40 ids outside 1..40, map to 0 (unlabelled).
        """
        n = (max_id if max_id is not None else 0xFFFF) + 1
        lut = np.zeros(n, np.uint8)
        for i, nyu in self.id_to_nyu40.items():
            if 0 <= i < n and 1 <= nyu <= NUM_NYU40:
                lut[i] = nyu
        return lut

    def map_ids(self, raw: np.ndarray) -> np.ndarray:
        """Raw ScanNet ids (any integer image) → NYU40 ids (uint8, 0 = unknown)."""
        raw = np.asarray(raw)
        top = int(raw.max()) if raw.size else 0
        return self.lut(max(top, 0))[raw.clip(0, None)]

    def nyu40_to_raw_id(self) -> np.ndarray:
        """A uint16 lookup NYU40 id → one raw id mapping to it (the smallest, so it is deterministic); 0 → 0.

        NYU40 ids no raw id maps to get 0: writers check coverage with ``missing_nyu40``.
        """
        inv = np.zeros(256, np.uint16)
        for i in sorted(self.id_to_nyu40, reverse=True):
            nyu = self.id_to_nyu40[i]
            if 1 <= nyu <= NUM_NYU40 and 0 < i <= 0xFFFF:
                inv[nyu] = i
        return inv

    def nyu40_to_raw_category(self) -> dict[int, str]:
        """NYU40 id → one raw category string mapping to it (first in table order), for aggregation files."""
        out: dict[int, str] = {}
        for r in self.rows:
            if self.raw_to_nyu40.get(r.raw_category) == r.nyu40id:
                out.setdefault(r.nyu40id, r.raw_category)
        return out

    def missing_nyu40(self, ids: Iterable[int]) -> list[int]:
        """Which of the NYU40 ids (0 excluded) no raw id maps to."""
        covered = set(self.id_to_nyu40.values())
        return sorted({int(i) for i in ids if int(i) != 0 and int(i) not in covered})


def read_label_table(path: str | Path) -> LabelTable:
    """Parse ``scannetv2-labels.combined.tsv``; a malformed row raises ``FormatError`` naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"ScanNet label table not found: {path}")
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()  # handles the CRLF line ends
    if not lines:
        raise FormatError(f"{path}: empty label table")
    header = lines[0].split("\t")
    for col in ("id", "raw_category", "nyu40id"):
        if col not in header:
            raise FormatError(f"{path}: header has no column {col!r} (found {header})")
    idx = {c: i for i, c in enumerate(header)}
    rows: list[LabelRow] = []
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) != len(header):
            raise FormatError(f"{path}:{lineno}: {len(cells)} columns, header has {len(header)}")
        try:
            rid, nyu = int(cells[idx["id"]]), int(cells[idx["nyu40id"]])
            count = int(cells[idx["count"]]) if "count" in idx and cells[idx["count"]].strip() else 0
        except ValueError as e:
            raise FormatError(f"{path}:{lineno}: non-integer id/nyu40id/count ({e})") from None
        extra = {c: cells[i] for c, i in idx.items() if c not in ("id", "raw_category", "category", "count", "nyu40id")}
        rows.append(LabelRow(id=rid, raw_category=cells[idx["raw_category"]], nyu40id=nyu,
                             category=cells[idx["category"]] if "category" in idx else "", count=count, extra=extra))
    return LabelTable.from_rows(rows, path=str(path))


def write_label_table(path: str | Path, rows: list[LabelRow]) -> None:
    """Write the real 17-column, CRLF layout with its header."""
    lines = ["\t".join(TABLE_COLUMNS)] + ["\t".join(r.cells()) for r in rows]
    Path(path).write_bytes(("\r\n".join(lines) + "\r\n").encode("utf-8"))


def synthetic_label_table() -> list[LabelRow]:
    """Rows covering NYU40 ids 1..40, shaped like the real table.

    Raw ids are ``1000 + nyu40id`` (deliberately not the NYU40 id and above 255, so that a reader that forgets the
    mapping or truncates 16-bit ids fails), plus an alias row for every fourth class (a second raw id and name
    mapping to the same NYU40 id, as the real table has) and one duplicated id resolved last-row-wins.
    """
    rows: list[LabelRow] = []
    for nyu in range(1, NUM_NYU40 + 1):
        name = NYU40_NAMES[nyu]
        extra = {"nyuClass": name, "nyu40class": name, "eigen13id": "", "eigen13class": "", "mpcat40": name,
                 "mpcat40index": str(nyu)}
        rows.append(LabelRow(id=1000 + nyu, raw_category=name, nyu40id=nyu, category=name, count=100 - nyu,
                             extra=extra))
        if nyu % 4 == 0:
            rows.append(LabelRow(id=2000 + nyu, raw_category=f"{name} alias", nyu40id=nyu, category=name, count=1,
                                 extra=dict(extra)))
    # a duplicated id: the first row says otherprop (40), the last says otherfurniture (39) and wins
    rows.append(LabelRow(id=3000, raw_category="crate", nyu40id=40, category="crate", count=2))
    rows.append(LabelRow(id=3000, raw_category="crates", nyu40id=39, category="crate", count=1))
    return rows


def read_scene_list(path: str | Path) -> list[str]:
    """Scene names from an official split file (or any list): one name a line, blanks and ``#`` comments ignored."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"scene list not found: {path}")
    names = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if any(c.isspace() for c in s) or "/" in s:
            raise FormatError(f"{path}:{lineno}: not a scene name: {s!r}")
        names.append(s)
    return names


# ---------------------------------------------------------------------------------------------- aggregation


def _load_json(path: Path) -> dict:
    if not path.is_file():
        raise FormatError(f"missing annotation file: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FormatError(f"{path}: invalid JSON ({e})") from None


def read_aggregation(path_agg: str | Path, path_segs: str | Path, table: LabelTable,
                     num_vertices: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-vertex (NYU40 labels uint8, instance ids int32) from ``aggregation.json`` + ``segs.json``.

    ``label`` (a raw category) maps through the table (unknown → 0, logged); instance id = objectId + 1; vertices in
    no group get 0 / 0.
    """
    path_agg, path_segs = Path(path_agg), Path(path_segs)
    segs = _load_json(path_segs)
    if "segIndices" not in segs:
        raise FormatError(f"{path_segs}: no 'segIndices'")
    seg = np.asarray(segs["segIndices"], np.int64)
    if num_vertices is not None and len(seg) != num_vertices:
        raise FormatError(f"{path_segs}: {len(seg)} segIndices for a mesh of {num_vertices} vertices")
    agg = _load_json(path_agg)
    if "segGroups" not in agg:
        raise FormatError(f"{path_agg}: no 'segGroups'")
    seg_label: dict[int, int] = {}
    seg_inst: dict[int, int] = {}
    unknown: set[str] = set()
    for g in agg["segGroups"]:
        try:
            raw, obj, members = str(g["label"]), int(g["objectId"]), g["segments"]
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"{path_agg}: malformed segGroup {g!r} ({e})") from None
        nyu = table.raw_to_nyu40.get(raw, 0)
        if raw not in table.raw_to_nyu40:
            unknown.add(raw)
        nyu = nyu if 1 <= nyu <= NUM_NYU40 else 0
        for s in members:
            seg_label[int(s)] = nyu
            seg_inst[int(s)] = obj + 1
    if unknown:
        log.warning("%s: categories not in the label table (labelled 0): %s", path_agg, sorted(unknown))
    uniq, inv = np.unique(seg, return_inverse=True)
    lab = np.array([seg_label.get(int(s), 0) for s in uniq], np.uint8)
    ins = np.array([seg_inst.get(int(s), 0) for s in uniq], np.int32)
    return lab[inv], ins[inv]


def write_aggregation(path_agg, path_segs, mesh: MeshRecord, table: LabelTable, scene: str) -> None:
    """One segment per (instance, label) vertex set and one group per labelled segment.

    objectId = instance - 1 where ``mesh.instances`` gives an instance (so it reads back unchanged); labelled
    vertices without one, or an instance carrying a second label, get fresh object ids after the largest instance.
    """
    labels = np.asarray(mesh.labels, np.int64)
    inst = np.zeros_like(labels) if mesh.instances is None else np.asarray(mesh.instances, np.int64)
    names = table.nyu40_to_raw_category()
    missing = sorted({int(x) for x in np.unique(labels) if x != 0 and int(x) not in names})
    if missing:
        raise ValueError(f"{path_agg}: the label table has no raw category for NYU40 ids {missing}")
    keys, inv = np.unique(inst * 256 + labels, return_inverse=True)
    seg_ids = np.arange(len(keys)) * 3 + 7  # sparse ids, as real over-segmentations have
    groups, used, fresh = [], set(), int(inst.max(initial=0))
    for k, sid in zip(keys.tolist(), seg_ids.tolist(), strict=True):
        i, lab = divmod(k, 256)
        if lab == 0:
            continue
        if i > 0 and i not in used:
            obj = i - 1
            used.add(i)
        else:
            obj, fresh = fresh, fresh + 1
        groups.append({"id": obj, "objectId": obj, "segments": [sid], "label": names[lab]})
    groups.sort(key=lambda g: g["objectId"])
    segs = {"params": {"kThresh": "0.0001", "segMinVerts": "20", "minPoints": "750", "maxPoints": "5000",
                       "thinThresh": "0.05", "flatThresh": "0.001", "minLength": "0.02", "maxLength": "1"},
            "sceneId": scene, "segIndices": seg_ids[inv].tolist()}
    agg = {"sceneId": f"scannet.{scene}", "appId": "Aggregator.v2", "segGroups": groups,
           "segmentsFile": f"scannet.{Path(path_segs).name}"}
    Path(path_segs).write_text(json.dumps(segs), encoding="utf-8")
    Path(path_agg).write_text(json.dumps(agg, indent=1), encoding="utf-8")
