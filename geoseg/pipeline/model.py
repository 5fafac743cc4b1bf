"""The pipeline file: its sections, the resolved :class:`Stage` objects, :func:`load_pipeline`."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from geoseg.config import Strict, deep_update, format_validation_error, read_yaml, validate
from geoseg.errors import ConfigError
from geoseg.parallel import LOCAL_SCHEDULERS, check_scheduler

log = logging.getLogger(__name__)

STAGES = ("tile", "train", "predict", "evaluate")
STAMPS = ".stamps"
# Why a stage runs (StageRun.code); stage functions pick overwrite/resume from it.
FORCE, FROM, FIRST, UNFINISHED, PARAMS = "force", "from", "first", "unfinished", "params"
UPSTREAM, OUTPUT_MISSING, INPUT_MISSING, INPUT_NEWER = "upstream", "output", "input", "newer"
UP_TO_DATE = "ok"


def show(path: Path, cwd: Path | None = None) -> str:
    """``path`` relative to ``cwd`` (default: the current folder) when inside it, else absolute."""
    rel = os.path.relpath(Path(path).absolute(), (cwd or Path.cwd()).absolute())
    return str(Path(path).absolute()) if rel.startswith("..") else rel


def _as_tuple(value: Any) -> Any:
    return (value,) if isinstance(value, str) else value


class TileStage(Strict):
    """``tile:`` scenes + labels → chips (:func:`geoseg.tile.tile`)."""

    scenes: tuple[str, ...] = Field(min_length=1)
    labels: str | None = None
    out: str = "patches"
    config: str | None = Field(None, description="TileConfig YAML; params override it")
    params: dict[str, Any] = Field(default_factory=dict, description="TileConfig keys")
    skip_bad: bool = False
    one_scene = field_validator("scenes", mode="before")(_as_tuple)


class TrainStage(Strict):
    """``train:`` chips → run directory (:func:`geoseg.train.loop.train`)."""

    config: str | None = Field(None, description="TrainConfig YAML; params override it")
    params: dict[str, Any] = Field(default_factory=dict)
    patches: str | None = Field(None, description="default: the tile stage's out")
    out: str = "run"
    epochs: int | None = Field(None, ge=1)


class PredictStage(Strict):
    """``predict:`` scenes + model → polygons (:func:`geoseg.predict.stage.predict`)."""

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
        from geoseg.tile import TileConfig

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
