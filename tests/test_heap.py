"""predict fixes glibc's mmap threshold so block buffers go back to the system (geoseg/predict/heap.py)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest
from conftest import bright_boxes_scene

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="glibc only")

# In a fresh process: free an 8 MiB chunk (glibc's dynamic rule raises the mmap threshold to
# its size), then ask for 1 MiB and see in mallinfo2 whether it was mmap'd (returned to the
# system on free) or carved from the arena's heap.
PROBE = r"""
import ctypes, json, sys
libc = ctypes.CDLL("libc.so.6")
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
what = None
if sys.argv[1] == "bound":
    from geoseg.predict.heap import bound_heap
    what = bound_heap()
big = libc.malloc(8 << 20)
libc.free(big)
before = libc.mallinfo2().hblkhd
small = libc.malloc(1 << 20)
print(json.dumps({"what": what, "mmapped": libc.mallinfo2().hblkhd - before >= (1 << 20)}))
libc.free(small)
"""


def _probe(mode: str, **env: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], check=True, capture_output=True, text=True,
                         env={**{k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}, **env})
    return json.loads(out.stdout)


def test_bound_heap_keeps_block_buffers_mmapped():
    assert _probe("default") == {"what": None, "mmapped": False}  # glibc's dynamic threshold
    assert _probe("bound") == {"what": "set", "mmapped": True}


def test_bound_heap_leaves_the_users_choice():
    assert _probe("bound", GEOSEG_MALLOC="default") == {"what": "user", "mmapped": False}
    assert _probe("bound", MALLOC_MMAP_THRESHOLD_="33554432")["what"] == "user"


def test_predict_fixes_the_threshold(tiny_run, tmp_path, monkeypatch):
    import geoseg.predict.heap as heap
    from geoseg.predict import PredictConfig, predict

    scene = bright_boxes_scene(tmp_path / "s.tif", (128, 128), [(20, 20, 50, 44)])
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("GEOSEG_MALLOC", raising=False)
    monkeypatch.setattr(heap, "_done", {})
    predict([scene], tiny_run, tmp_path / "o.gpkg", PredictConfig(), scheduler="sync", progress=False)
    assert heap._done == {os.getpid(): "set"}
