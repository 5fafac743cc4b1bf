"""Stamps of finished stages, and whether a stage must run again."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from geoseg.errors import GeoSegError, quietly
from geoseg.io.stamps import digest, input_stamp, read_stamp
from geoseg.pipeline.model import (
    FIRST,
    INPUT_MISSING,
    INPUT_NEWER,
    OUTPUT_MISSING,
    PARAMS,
    READ,
    UNFINISHED,
    UP_TO_DATE,
    UPSTREAM,
    Stage,
    show,
)


def newest_mtime(path: Path) -> int | None:
    """The mtime (ns) of a file, or the newest of a folder and all in it; None when missing."""
    stamp = input_stamp(path)
    return None if stamp is None else int(stamp["mtime_ns"])


def _decide(stage: Stage[Any], stamp: dict[str, Any] | None, rebuilt: dict[Path, str],
            root: Path) -> tuple[str, str]:
    """Whether ``stage`` must run: (reason code, reason in words)."""
    if stamp is None:
        return FIRST, "first run"
    if stamp.get("digest") != stage.digest:
        return PARAMS, "parameters changed"
    for inp in stage.inputs:
        for made, by in rebuilt.items():
            if inp == made or made in inp.parents or inp in made.parents:
                return UPSTREAM, f"input {show(inp)} rebuilt by {by}"
    times = {p: newest_mtime(p) for p in stage.inputs}
    if stamp.get("status") != "done":
        if max((t for t in times.values() if t), default=0) > stamp.get("inputs_mtime_ns", 0):
            return INPUT_NEWER, "last run did not finish, and an input changed since"
        return UNFINISHED, "last run did not finish"
    outputs = dict.fromkeys(stage.outputs + _recorded(stamp, root))
    out_times = [newest_mtime(o) for o in outputs]
    for o, t in zip(outputs, out_times, strict=True):
        if t is None:
            return OUTPUT_MISSING, f"output {show(o)} missing"
    for p, t in times.items():
        if t is None:
            return INPUT_MISSING, f"input {show(p)} missing"
    oldest = min((t for t in out_times if t is not None), default=stamp.get("finished_ns", 0))
    for p, t in times.items():
        if t is not None and t > oldest:
            return INPUT_NEWER, f"input {show(p)} newer than the outputs"
    if "reads" in stamp and stamp["reads"] != scene_reads(stage):  # a stamp without: adopted (run.py)
        return READ, ("its scenes are read otherwise than when it ran (another geoseg revision, "
                      "or their grid, bands or mask changed)")
    return UP_TO_DATE, "up to date"


def scene_reads(stage: Stage[Any]) -> str | None:
    """A digest of how the stage's scenes are read now; None for a stage without scenes.

    Each scene's :func:`~geoseg.io.stamps.read_stamp` (its grid, bands, validity as geoseg
    opens it; None for one it cannot open, which the stage reports or skips). Recorded in
    the stamp when the stage runs: after an upgrade that reads the same unchanged files
    otherwise, the stage runs again rather than leaving outputs of the old reading
    (chips, polygons) to the stages after it.
    """
    scenes = getattr(stage.args, "scenes", None)
    if not scenes:
        return None
    from geoseg.io import rasters
    from geoseg.io.sources import list_scenes

    def one(src: Any) -> dict[str, Any] | None:  # not its path: a moved project stays up to date
        try:
            return read_stamp(rasters.inspect_scene(src))
        except GeoSegError:
            return None

    with quietly():  # the stage warns about its scenes when it runs (the listing's left-out files too)
        try:
            found = list_scenes(scenes)
        except GeoSegError:
            return "unlisted"  # the stage says why when it runs
        with ThreadPoolExecutor(max_workers=min(8, len(found) or 1)) as pool:  # remote headers: in parallel
            return digest(list(pool.map(one, found)))


def _recorded(stamp: dict[str, Any] | None, root: Path) -> list[Path]:
    """The outputs a stamp records (relative to the pipeline's folder) as paths."""
    return [Path(os.path.normpath(root / o)) for o in (stamp or {}).get("outputs", [])]


def _read_stamp(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # missing or damaged: the stage reruns
    return data if isinstance(data, dict) else None
