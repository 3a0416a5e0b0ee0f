"""The training processes' allocator setting (pipeline/allocator.py): large freed blocks stay in the heap."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys

import pytest

PROBE = r"""
import ctypes, json, sys
from pipeline.allocator import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
took = keep_freed_memory()
size = 12 * 1024 * 1024  # a student's upsampled logits at batch 16, 97x97
before = libc.mallinfo2()
p = libc.malloc(size)
ctypes.memset(p, 1, size)
during = libc.mallinfo2()
libc.free(p)
after = libc.mallinfo2()
print(json.dumps({"took": took, "mmapped": during.hblkhd - before.hblkhd, "kept_free": after.fordblks}))
"""


def _probe(env: dict[str, str]) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}  # e.g. left by an in-process train
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env={**clean, **env},
                         check=True).stdout
    return json.loads(out)


@pytest.mark.skipif(not sys.platform.startswith("linux") or not hasattr(ctypes.CDLL(None), "mallinfo2"),
                    reason="glibc only: mallopt/mallinfo2 are glibc's")
def test_training_processes_keep_freed_blocks_in_the_heap() -> None:
    size = 12 * 1024 * 1024
    tuned = _probe({})
    assert tuned["took"] is True
    assert tuned["mmapped"] == 0  # served from the heap, not a fresh mmap
    assert tuned["kept_free"] >= size  # and still there after free: the next step reuses it, no page faults
    default = _probe({"DISTILL_CACHE_MALLOC": "default"})
    assert default["took"] is False
    assert default["mmapped"] >= size  # glibc's own behaviour: a fresh mapping, returned to the OS on free
    assert default["kept_free"] < size


def test_spawned_processes_inherit_the_setting() -> None:
    """The teacher's workers are spawned interpreters: glibc reads the setting from their environment."""
    code = ("import os; from pipeline.allocator import keep_freed_memory; keep_freed_memory(); "
            "print(os.environ['MALLOC_MMAP_THRESHOLD_'], os.environ['MALLOC_TRIM_THRESHOLD_'])")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    if sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None), "mallopt"):
        assert out.split() == [str(32 * 1024 * 1024), str(1024 * 1024 * 1024)]
