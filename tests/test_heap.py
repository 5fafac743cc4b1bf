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
    # no MALLOC_* tunable from this process: distributed's Nanny leaves MALLOC_TRIM_THRESHOLD_ in
    # os.environ after a LocalCluster (tests/test_predict.py starts one), and any such variable
    # turns glibc's dynamic mmap threshold off in the child
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], check=True, capture_output=True, text=True,
                         env={**clean, **env})
    return json.loads(out.stdout)


def test_bound_heap_keeps_block_buffers_mmapped():
    assert _probe("default") == {"what": None, "mmapped": False}  # glibc's dynamic threshold
    assert _probe("bound", GEOSEG_MALLOC="mmap") == {"what": "set", "mmapped": True}
    assert _probe("bound") == {"what": "user", "mmapped": False}  # the default mode trims instead


def test_bound_heap_leaves_the_users_choice():
    assert _probe("bound", GEOSEG_MALLOC="default") == {"what": "user", "mmapped": False}
    assert _probe("bound", GEOSEG_MALLOC="mmap", MALLOC_MMAP_THRESHOLD_="33554432")["what"] == "user"


# 400 chunks of 256 KiB below a fixed threshold of 32 MiB come from the heap; freeing all but
# the last keeps the top of the heap, so ~100 MiB of free pages stay resident until trimmed.
TRIM = r"""
import ctypes, sys
from geoseg.predict.heap import releasing  # imported first: its imports allocate
libc = ctypes.CDLL("libc.so.6")
libc.mallopt(-3, 32 << 20)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def rss():
    return int([l for l in open("/proc/self/status") if l.startswith("VmRSS")][0].split()[1]) // 1024
ps = [libc.malloc(256 << 10) for _ in range(400)]
for p in ps:
    ctypes.memset(p, 1, 256 << 10)
for p in ps[:-1]:
    libc.free(p)
before = rss()
releasing(lambda: None)()
print(before - rss())
"""


@pytest.mark.parametrize("mode", ["trim", "default"])
def test_a_block_task_gives_free_heap_pages_back(mode):
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    out = subprocess.run([sys.executable, "-c", TRIM], check=True, capture_output=True, text=True,
                         env={**env, "GEOSEG_MALLOC": mode})
    freed_mb = int(out.stdout)
    assert freed_mb > 80 if mode == "trim" else freed_mb < 10


def test_predict_trims_after_every_block_task(tiny_run, tmp_path, monkeypatch):
    import geoseg.predict.heap as heap
    from geoseg.predict import PredictConfig, predict

    scene = bright_boxes_scene(tmp_path / "s.tif", (128, 128), [(20, 20, 50, 44)])
    calls = []
    monkeypatch.setattr(heap, "release", lambda: calls.append(1))
    s = predict([scene], tiny_run, tmp_path / "o.gpkg", PredictConfig(block=64), scheduler="sync", progress=False)
    assert s.blocks == 4 and len(calls) == 3 * s.blocks  # PV, FF and instances of each block
