"""`geoseg run`: the stages tile → train → predict → evaluate, declared in one YAML file.

Each stage is optional; those declared run in that order. A stage is *skipped* when

1. its stamp (``WORKDIR/.stamps/<stage>.json``, written atomically after the stage
   succeeded) records the same digest of the resolved stage config (paths, parameters,
   the merged contents of its config file), and
2. all its outputs exist and none is older than its newest input (for a directory,
   the newest mtime of anything inside it), and
3. no earlier stage reran in this run and produced one of its inputs.

``from_stage`` reruns that stage and every later one; ``force`` reruns all. A stage
that fails (or is interrupted) leaves a stamp marked ``running``: the next run retries
it (train resumes from ``last.pt`` when nothing changed). Input paths are relative to
the pipeline file's folder, output paths to ``workdir``. See docs/pipelines.md.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from geoseg import __version__
from geoseg.errors import ConfigError, GeoSegError, OutputExistsError
from geoseg.io.atomic import write_json
from geoseg.io.sources import SceneSource, is_remote
from geoseg.parallel import check_scheduler
from geoseg.pipeline.model import FORCE, FROM, UP_TO_DATE, Pipeline, Stage, StageResult, load_pipeline, show
from geoseg.pipeline.scheduler import SharedScheduler
from geoseg.pipeline.stages import StageRun, run_stage
from geoseg.pipeline.stamps import _decide, _read_stamp, _recorded, newest_mtime, scene_reads

log = logging.getLogger(__name__)


def run_pipeline(
    pipeline: str | Path | Pipeline,
    *,
    from_stage: str | None = None,
    force: bool = False,
    scheduler: Any = None,
    progress: bool | None = None,
    on_start: Callable[[str, str], None] | None = None,
    on_result: Callable[[StageResult], None] | None = None,
) -> list[StageResult]:
    """Run the declared stages in order, skipping those that are up to date.

    Args:
        pipeline: the pipeline file, or a :class:`Pipeline` from :func:`load_pipeline`.
        from_stage: rerun this stage and every later one (earlier ones follow the rules).
        force: rerun every stage.
        scheduler: overrides the file's ``scheduler`` and ``cluster``: a local scheduler
            name, a ``tcp://`` address, or a ``distributed.Client`` (left open).
        progress: progress bars of the stages (None: on a TTY).
        on_start: called with (stage, why) before a stage runs.
        on_result: called with each :class:`StageResult` as soon as it is known.

    Returns:
        One :class:`StageResult` per declared stage, in order.

    Raises:
        ConfigError: a bad pipeline file, or ``from_stage`` not declared in it.
        GeoSegError: what a stage raised, its message prefixed with the stage and file.
    """
    pipe = pipeline if isinstance(pipeline, Pipeline) else load_pipeline(pipeline)
    if from_stage is not None and from_stage not in pipe.stages:
        raise ConfigError(f"--from {from_stage}: {pipe.path} declares no {from_stage} stage; "
                          f"use one of {', '.join(pipe.stages)}")
    check_scheduler(scheduler)
    shared = (SharedScheduler(pipe.scheduler, pipe.cluster) if scheduler is None
              else SharedScheduler(scheduler, None))
    root = pipe.path.absolute().parent
    results: list[StageResult] = []
    rebuilt: dict[Path, str] = {}
    forcing = False
    try:
        for name, stage in pipe.stages.items():
            forcing = forcing or name == from_stage
            stamp = _read_stamp(pipe.stamp_path(name))
            code, why = ((FORCE, "--force") if force else (FROM, f"--from {from_stage}") if forcing
                         else _decide(stage, stamp, rebuilt, root))
            if code == UP_TO_DATE:
                if stamp is not None and "reads" not in stamp and (reads := scene_reads(stage)) is not None:
                    # a stamp of a revision that did not record it: the scenes' reading now is adopted
                    write_json(pipe.stamp_path(name), {**stamp, "reads": reads}, indent=2)
                outs = _recorded(stamp, root) or stage.outputs
                result = StageResult(name, False, why, 0.0, outs)
            else:
                result = _run_stage(pipe, stage, StageRun(code, shared, progress), why, on_start)
                rebuilt.update(dict.fromkeys(result.outputs, name))
            results.append(result)
            if on_result is not None:
                on_result(result)
    finally:
        shared.close()
    return results


def _run_stage(pipe: Pipeline, stage: Stage[Any], run: StageRun, why: str,
               on_start: Callable[[str, str], None] | None) -> StageResult:
    if on_start is not None:
        on_start(stage.name, why)
    log.info("%s: running (%s)", stage.name, why)
    stamp_path = pipe.stamp_path(stage.name)
    times = [t for t in map(newest_mtime, stage.inputs) if t is not None]
    record = {"stage": stage.name, "digest": stage.digest, "config": stage.config,
              "geoseg_version": __version__, "inputs_mtime_ns": max(times, default=0),
              **({"reads": reads} if (reads := scene_reads(stage)) is not None else {})}
    write_json(stamp_path, {**record, "status": "running"}, indent=2)
    t0 = time.perf_counter()
    try:
        outputs, details = run_stage(stage, run)
    except GeoSegError as err:  # same class (exit 1, one line), naming stage and file
        if run.first and isinstance(err, OutputExistsError):
            stamp_path.unlink(missing_ok=True)  # still not ours: a rerun must not clobber it
        try:
            wrapped = type(err)(f"{stage.name} stage of {pipe.path}: {err}")
        except TypeError:
            raise err from None
        raise wrapped from err
    seconds = time.perf_counter() - t0
    root = pipe.path.absolute().parent
    write_json(stamp_path, {**record, "status": "done", "seconds": round(seconds, 3),
                            "finished_ns": time.time_ns(),
                            "outputs": [os.path.relpath(p, root) for p in outputs]}, indent=2)
    return StageResult(stage.name, True, why, seconds, list(outputs), details)


def qgis_hint(pipe: Pipeline) -> str | None:
    """How to look at the predictions in QGIS (None without a predict stage)."""
    if "predict" not in pipe.stages:
        return None
    a = pipe.stages["predict"].args
    return (f"open {show(a.out)} in QGIS (Layer > Add Layer > Add Vector Layer), on top of "
            f"{', '.join(_where(s) for s in a.scenes)} (Layer > Add Layer > Add Raster Layer)")


def _where(scene: str | SceneSource) -> str:
    """A scene as a user adds it in QGIS: a URL as is, a local path relative to here."""
    src = scene.source if isinstance(scene, SceneSource) else scene
    return src if is_remote(src) else show(Path(src))
