"""`geoseg.io.stamps`: the one "has this input changed?" answer."""

from __future__ import annotations

import os
from pathlib import Path

from geoseg.io.stamps import digest, input_stamp


def test_a_file_rewritten_deep_in_a_folder_changes_the_folder_stamp(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    best = run / "checkpoints" / "best.pt"
    best.write_bytes(b"a" * 10)
    os.utime(run, ns=(1, 1))
    before = input_stamp(run)
    assert before is not None and before["bytes"] == 10 and before["name"] == "run"
    dir_mtime = run.stat().st_mtime_ns
    best.write_bytes(b"b" * 12)
    os.utime(best, ns=(before["mtime_ns"] + 10**9, before["mtime_ns"] + 10**9))
    assert run.stat().st_mtime_ns == dir_mtime  # the folder itself did not change
    after = input_stamp(run)
    assert after != before and after is not None and after["bytes"] == 12


def test_file_stamp_and_missing(tmp_path: Path) -> None:
    f = tmp_path / "scene.tif"
    f.write_bytes(b"xyz")
    s = input_stamp(f)
    assert s == {"name": "scene.tif", "bytes": 3, "mtime_ns": f.stat().st_mtime_ns}
    assert input_stamp(tmp_path / "gone.tif") is None
    assert digest({"a": s}) == digest({"a": dict(s)}) != digest({"a": None})
