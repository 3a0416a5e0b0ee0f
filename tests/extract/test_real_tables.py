"""The real ScanNet label table and official splits (shared/data) parse as FORMATS.md describes."""

from __future__ import annotations

import numpy as np
from conftest import SHARED_DATA as DATA

from cache_schema.labels import SCANNET20
from stages.extract.formats.scannet import ScanNetDataset
from stages.extract.formats.scannet_labels import read_label_table, read_scene_list

TABLE = DATA / "scannetv2-labels.combined.tsv"


def test_real_label_table():
    t = read_label_table(TABLE)
    assert len(t.rows) == 607
    assert len(t.id_to_nyu40) == 549  # 51 ids appear twice (FORMATS.md names the 3 whose nyu40id differs)
    # the duplicated ids whose rows disagree: the last row wins, as in ScanNet's converter
    assert (t.id_to_nyu40[107], t.id_to_nyu40[188], t.id_to_nyu40[385]) == (38, 38, 3)
    assert t.raw_to_nyu40["pipe"] == 40 and t.raw_to_nyu40["pipes"] == 38
    assert (t.id_to_nyu40[1], t.id_to_nyu40[2], t.raw_to_nyu40["floor"]) == (1, 5, 2)
    assert set(t.id_to_nyu40.values()) == set(range(1, 41))
    lut = t.lut()
    assert lut.shape == (65536,) and lut[385] == 3 and lut[1357] == t.id_to_nyu40[1357] and lut[1358] == 0
    # every NYU40 id, so every benchmark class, has a raw id a 2D label image can carry
    inv = t.nyu40_to_raw_id()
    assert all(lut[inv[k]] == k for k in range(1, 41))
    assert all(k in t.nyu40_to_raw_category() for k in SCANNET20.ids)
    assert t.map_ids(np.array([[1, 107], [0, 9999]], np.uint16)).tolist() == [[1, 38], [0, 0]]


def test_real_splits():
    splits = {s: read_scene_list(DATA / f"scannet_scannetv2_{s}.txt") for s in ("train", "val", "test")}
    assert {s: len(v) for s, v in splits.items()} == {"train": 1201, "val": 312, "test": 100}
    assert all(len(set(v)) == len(v) for v in splits.values())
    assert not set(splits["train"]) & set(splits["val"]) and not set(splits["val"]) & set(splits["test"])
    assert all(n.startswith("scene") and len(n) == 12 for v in splits.values() for n in v)
    ds = ScanNetDataset("/nonexistent", split_file=DATA / "scannet_scannetv2_val.txt")
    assert ds.scene_names() == sorted(splits["val"])
