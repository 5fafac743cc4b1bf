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

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from geoseg import __version__
from geoseg.config import Strict, deep_update, format_validation_error, read_yaml, validate
from geoseg.errors import ConfigError, GeoSegError, OutputExistsError
from geoseg.io.atomic import write_json
from geoseg.parallel import LOCAL_SCHEDULERS, check_scheduler
from geoseg.stages import RUNNERS, show

log = logging.getLogger(__name__)

STAGES = ("tile", "train", "predict", "evaluate")
STAMPS = ".stamps"
# Why a stage runs (StageRun.code); stage functions pick overwrite/resume from it.
FORCE, FROM, FIRST, UNFINISHED, PARAMS = "force", "from", "first", "unfinished", "params"
UPSTREAM, OUTPUT_MISSING, INPUT_MISSING, INPUT_NEWER = "upstream", "output", "input", "newer"
UP_TO_DATE = "ok"


def _as_tuple(value: Any) -> Any:
    return (value,) if isinstance(value, str) else value


class TileStage(Strict):
    """``tile:`` scenes + labels → chips (:func:`geoseg.tiling.tile`)."""

    scenes: tuple[str, ...] = Field(min_length=1)
    labels: str | None = None
    out: str = "patches"
    config: str | None = Field(None, description="TileConfig YAML; params override it")
    params: dict[str, Any] = Field(default_factory=dict, description="TileConfig keys")
    skip_bad: bool = False
    one_scene = field_validator("scenes", mode="before")(_as_tuple)


class TrainStage(Strict):
    """``train:`` chips → run directory (:func:`geoseg.train.train`)."""

    config: str | None = Field(None, description="TrainConfig YAML; params override it")
    params: dict[str, Any] = Field(default_factory=dict)
    patches: str | None = Field(None, description="default: the tile stage's out")
    out: str = "run"
    epochs: int | None = Field(None, ge=1)


class PredictStage(Strict):
    """``predict:`` scenes + model → polygons (:func:`geoseg.predict.predict`)."""

    scenes: tuple[str, ...] = Field(min_length=1)
    model: str | None = Field(None, description="default: the train stage's out")
    out: str = "buildings.gpkg"
    params: dict[str, Any] = Field(default_factory=dict, description="PredictConfig keys")
    one_scene = field_validator("scenes", mode="before")(_as_tuple)


class EvaluateStage(Strict):
    """``evaluate:`` metrics JSON (as ``geoseg evaluate --json``), table, quick-look PNG."""

    truth: str
    pred: str | None = Field(None, description="default: the predict stage's out")
    scenes: tuple[str, ...] | None = Field(None, description="default: the predict stage's")
    clip: bool = Field(True, description="compare only inside the scenes' footprint")
    iou: float = Field(0.5, gt=0, le=1)
    class_field: str = "class"
    boundary_width: float | None = Field(None, gt=0)
    json_out: str | None = Field("evaluation.json", alias="json")
    quicklook: str | None = "quicklook.png"
    max_side: int = Field(1500, ge=64)
    one_scene = field_validator("scenes", mode="before")(_as_tuple)


class ClusterConfig(Strict):
    """``cluster: local`` (or a mapping): a LocalCluster shared by the stages."""

    kind: Literal["local"] = "local"
    workers: int = Field(2, ge=1)
    threads_per_worker: int = Field(1, ge=1)


class PipelineFile(Strict):
    """A pipeline file: where outputs go, the Dask scheduler, and the stages."""

    workdir: str = "."
    scheduler: str = "threads"
    cluster: ClusterConfig | None = None
    tile: TileStage | None = None
    train: TrainStage | None = None
    predict: PredictStage | None = None
    evaluate: EvaluateStage | None = None

    @field_validator("cluster", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"kind": value} if isinstance(value, str) else value

    @field_validator("scheduler")
    @classmethod
    def _known(cls, value: str) -> str:
        check_scheduler(value)
        return value

    @model_validator(mode="after")
    def _coherent(self) -> PipelineFile:
        if all(getattr(self, s) is None for s in STAGES):
            raise ValueError(f"no stage declared; add one of {', '.join(STAGES)}")
        if self.cluster is not None and self.scheduler not in LOCAL_SCHEDULERS:
            raise ValueError("give either 'cluster' or a scheduler address, not both")
        return self


@dataclass
class Stage:
    """A stage with its paths resolved and parameters validated.

    ``config`` (JSON-able, paths relative to the pipeline file) is what the stamp's
    digest covers; ``args`` is what the stage function gets.
    """

    name: str
    inputs: list[Path]
    outputs: list[Path]
    config: dict[str, Any]
    args: dict[str, Any] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        """sha256 of ``config``."""
        return hashlib.sha256(json.dumps(self.config, sort_keys=True).encode()).hexdigest()


@dataclass
class Pipeline:
    """A loaded pipeline file (:func:`load_pipeline`); ``stages`` in run order."""

    path: Path
    workdir: Path
    scheduler: str
    cluster: ClusterConfig | None
    stages: dict[str, Stage]

    def stamp_path(self, stage: str) -> Path:
        """Where the stamp of ``stage`` lives."""
        return self.workdir / STAMPS / f"{stage}.json"


@dataclass
class StageResult:
    """What happened to one stage: ran or skipped, why, seconds, outputs, summary lines."""

    stage: str
    ran: bool
    why: str
    seconds: float
    outputs: list[Path]
    details: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        """``ran`` or ``skipped``."""
        return "ran" if self.ran else "skipped"


def _params(model: type[Any], where: str, config: Path | None, params: dict[str, Any],
            source: Path) -> Any:
    """Validate a stage's config file, then its params (errors name key and file), then both."""
    base = read_yaml(config) if config is not None else {}
    if config is not None:
        validate(model, base, str(config))
    try:
        model.model_validate(params)
    except ValidationError as err:  # name the key as written in the pipeline file
        msg = format_validation_error(err, str(source))
        raise ConfigError(msg.replace(" '", f" '{where}.", 1)) from None
    return validate(model, deep_update(base, params), str(source))


def load_pipeline(path: str | Path) -> Pipeline:
    """Read and validate a pipeline file, resolving paths and stage parameters.

    Args:
        path: the pipeline YAML file.

    Returns:
        A :class:`Pipeline`.

    Raises:
        ConfigError: unreadable file, unknown key (named with its file), bad value, or a
            stage input that is neither in the file nor made by an earlier stage.
    """
    path = Path(path)
    spec = validate(PipelineFile, read_yaml(path), str(path))
    root = path.absolute().parent
    workdir = Path(os.path.normpath(root / spec.workdir))
    stages: dict[str, Stage] = {}

    def inp(p: str) -> Path:
        return Path(os.path.normpath(root / Path(p).expanduser()))

    def out(p: str) -> Path:
        return Path(os.path.normpath(workdir / Path(p).expanduser()))

    def rel(*ps: Path | None) -> list[str | None]:  # digests of a moved project stay the same
        return [None if p is None else os.path.relpath(p, root) for p in ps]

    def made(key: str, value: str | None, by: str) -> Path:
        if value is not None:
            return inp(value)
        if by not in stages:
            raise ConfigError(f"'{key}' is missing in {path}: set it, or declare a {by} stage")
        return stages[by].outputs[0]

    def add(name: str, inputs: list[Path], outputs: list[Path], a: dict[str, Any], **cfg: Any) -> None:
        config = {"inputs": rel(*inputs), "outputs": rel(*outputs), **cfg}
        stages[name] = Stage(name, inputs, outputs, config, a)

    if (t := spec.tile) is not None:
        from geoseg.tiling import TileConfig

        cfg = _params(TileConfig, "tile.params", inp(t.config) if t.config else None, t.params, path)
        scenes, labels = [inp(s) for s in t.scenes], inp(t.labels) if t.labels else None
        a = {"scenes": scenes, "labels": labels, "out": out(t.out), "cfg": cfg, "skip_bad": t.skip_bad}
        add("tile", scenes + ([labels] if labels else []), [out(t.out)], a,
            skip_bad=t.skip_bad, params=cfg.model_dump(mode="json"))
    if (r := spec.train) is not None:
        from geoseg.train import TrainConfig

        tcfg = _params(TrainConfig, "train.params", inp(r.config) if r.config else None, r.params, path)
        if r.epochs is not None:
            tcfg = tcfg.model_copy(update={"epochs": r.epochs})
        a = {"patches": made("train.patches", r.patches, "tile"), "out": out(r.out), "cfg": tcfg}
        add("train", [a["patches"]], [a["out"]], a, config=tcfg.model_dump(mode="json"))
    if (p := spec.predict) is not None:
        from geoseg.predict import PredictConfig

        params = dict(p.params)
        if isinstance(params.get("prob_out"), str):  # an output: relative to workdir
            params["prob_out"] = str(out(params["prob_out"]))
        pcfg = _params(PredictConfig, "predict.params", None, params, path)
        a = {"scenes": [inp(s) for s in p.scenes], "model": made("predict.model", p.model, "train"),
             "out": out(p.out), "cfg": pcfg}
        add("predict", [*a["scenes"], a["model"]], [a["out"]], a,
            params=pcfg.model_dump(mode="json", exclude={"prob_out"}),
            prob_out=rel(Path(pcfg.prob_out) if pcfg.prob_out else None)[0])
    if (e := spec.evaluate) is not None:
        scenes = ([inp(s) for s in e.scenes] if e.scenes is not None
                  else stages["predict"].args["scenes"] if "predict" in stages else [])
        if not scenes and (e.clip or e.quicklook):
            raise ConfigError(f"'evaluate.scenes' is missing in {path}: the quick-look and 'clip' "
                              "need the scenes; set it, declare a predict stage, or set "
                              "quicklook: null and clip: false")
        outs = {k: out(v) for k, v in (("json", e.json_out), ("quicklook", e.quicklook)) if v}
        settings = e.model_dump(exclude={"truth", "pred", "scenes", "json_out", "quicklook"})
        a = {"pred": made("evaluate.pred", e.pred, "predict"), "truth": inp(e.truth),
             "scenes": scenes, **outs, **settings}
        add("evaluate", [a["pred"], a["truth"], *scenes], list(outs.values()), a, **settings)
    return Pipeline(path, workdir, spec.scheduler, spec.cluster, stages)


def newest_mtime(path: Path) -> int | None:
    """The mtime (ns) of a file, or the newest of a folder and all in it; None when missing."""
    try:
        newest = path.stat().st_mtime_ns
    except FileNotFoundError:
        return None
    if path.is_dir():
        for top, dirs, files in os.walk(path):
            for name in dirs + files:
                with contextlib.suppress(FileNotFoundError):
                    newest = max(newest, os.stat(os.path.join(top, name)).st_mtime_ns)
    return newest


def _decide(stage: Stage, stamp: dict[str, Any] | None, rebuilt: dict[Path, str],
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
    return UP_TO_DATE, "up to date"


def _recorded(stamp: dict[str, Any] | None, root: Path) -> list[Path]:
    """The outputs a stamp records (relative to the pipeline's folder) as paths."""
    return [Path(os.path.normpath(root / o)) for o in (stamp or {}).get("outputs", [])]


def _read_stamp(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # missing or damaged: the stage reruns
    return data if isinstance(data, dict) else None


class SharedScheduler:
    """The Dask scheduler of a run: a local name, or ONE client shared by all stages.

    The client (of a ``tcp://`` address, or of a LocalCluster for ``cluster: local``) is
    started when a stage first asks for it and closed by :meth:`close`.
    """

    def __init__(self, scheduler: Any, cluster: ClusterConfig | None) -> None:
        self.spec, self.cluster = scheduler, cluster
        self._client: Any = None
        self._owned: list[Any] = []

    def get(self) -> Any:
        """The value to pass as ``scheduler=`` to :func:`geoseg.parallel.compute`."""
        if not isinstance(self.spec, str) or (self.cluster is None and self.spec in LOCAL_SCHEDULERS):
            return self.spec  # a local scheduler name, or the caller's own Client
        if self._client is None:
            self._client, self._owned = make_client(self.spec, self.cluster)
        return self._client

    def close(self) -> None:
        """Close the client and cluster started here (never the caller's)."""
        for obj in self._owned:
            with contextlib.suppress(Exception):
                obj.close()
        self._client, self._owned = None, []


def make_client(address: str, cluster: ClusterConfig | None) -> tuple[Any, list[Any]]:
    """A ``distributed.Client`` of ``address`` or of a new LocalCluster, and what to close."""
    from distributed import Client, LocalCluster

    if cluster is None:
        client = Client(address, set_as_default=False)
        return client, [client]
    lc = LocalCluster(n_workers=cluster.workers, threads_per_worker=cluster.threads_per_worker,
                      dashboard_address=None)
    log.info("started a LocalCluster of %d workers at %s", cluster.workers, lc.scheduler_address)
    client = Client(lc, set_as_default=False)
    return client, [client, lc]


@dataclass
class StageRun:
    """What a stage function gets besides its :class:`Stage`: why it runs, and the scheduler."""

    code: str
    scheduler: SharedScheduler
    progress: bool | None

    @property
    def first(self) -> bool:
        """The stage never ran: an existing output is not this pipeline's."""
        return self.code == FIRST

    @property
    def changed(self) -> bool:
        """Parameters, inputs or upstream outputs changed, or a rerun was asked for."""
        return self.code in (FORCE, FROM, PARAMS, UPSTREAM, INPUT_NEWER)

    @property
    def unfinished(self) -> bool:
        """The last run of the stage stopped before it finished, and nothing changed."""
        return self.code == UNFINISHED


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


def _run_stage(pipe: Pipeline, stage: Stage, run: StageRun, why: str,
               on_start: Callable[[str, str], None] | None) -> StageResult:
    if on_start is not None:
        on_start(stage.name, why)
    log.info("%s: running (%s)", stage.name, why)
    stamp_path = pipe.stamp_path(stage.name)
    times = [t for t in map(newest_mtime, stage.inputs) if t is not None]
    record = {"stage": stage.name, "digest": stage.digest, "config": stage.config,
              "geoseg_version": __version__, "inputs_mtime_ns": max(times, default=0)}
    write_json(stamp_path, {**record, "status": "running"}, indent=2)
    t0 = time.perf_counter()
    try:
        outputs, details = RUNNERS[stage.name](stage, run)
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
    return (f"open {show(a['out'])} in QGIS (Layer > Add Layer > Add Vector Layer), on top of "
            f"{', '.join(show(s) for s in a['scenes'])} (Layer > Add Layer > Add Raster Layer)")
