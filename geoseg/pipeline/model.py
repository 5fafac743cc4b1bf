"""The pipeline file: the resolved :class:`Stage` objects and :func:`load_pipeline` (sections: :mod:`.schema`)."""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from pydantic import ConfigDict, ValidationError

from geoseg.config import Strict, deep_update, format_validation_error, read_yaml, validate
from geoseg.errors import ConfigError
from geoseg.io.sources import SceneSource
from geoseg.pipeline.schema import (
    STAGES,
    ClusterConfig,
    EvaluateStage,
    PipelineFile,
    PredictStage,
    StacSearch,
    TileStage,
    TrainStage,
)

if TYPE_CHECKING:  # the real types for mypy; imported only when a stage is resolved
    from geoseg.predict import PredictConfig
    from geoseg.tile import TileConfig
    from geoseg.train import TrainConfig
else:
    PredictConfig = TileConfig = TrainConfig = Any

log = logging.getLogger(__name__)

STAMPS = ".stamps"
# Why a stage runs (StageRun.code); stage functions pick overwrite/resume from it.
FORCE, FROM, FIRST, UNFINISHED, PARAMS = "force", "from", "first", "unfinished", "params"
UPSTREAM, OUTPUT_MISSING, INPUT_MISSING, INPUT_NEWER = "upstream", "output", "input", "newer"
READ = "read"  # the scenes are read otherwise than when the stage ran (another geoseg revision)
UP_TO_DATE = "ok"


def show(path: Path, cwd: Path | None = None) -> str:
    """``path`` relative to ``cwd`` (default: the current folder) when inside it, else absolute."""
    rel = os.path.relpath(Path(path).absolute(), (cwd or Path.cwd()).absolute())
    return str(Path(path).absolute()) if rel.startswith("..") else rel


class StageArgs(Strict):
    """Base of the resolved arguments of one stage kind (what its runner gets).

    Subclasses have no defaults of their own (those live in the stage's section model)
    and, like every config model, reject unknown keys.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)
    section: ClassVar[type[Strict]]  # the model of the stage's section of the pipeline file

    @classmethod
    def resolve(cls, section: Any, ctx: _Resolver) -> Stage[Any]:
        """The stage of ``section`` (an instance of :attr:`section`), paths resolved."""
        raise NotImplementedError


A = TypeVar("A", bound=StageArgs)


@dataclass
class Stage(Generic[A]):
    """A stage with its paths resolved and parameters validated.

    ``config`` (JSON-able, paths relative to the pipeline file) is what the stamp's
    digest covers; ``args`` (the stage kind's :class:`StageArgs` model) is what the
    stage function gets.
    """

    name: str
    inputs: list[Path]
    outputs: list[Path]
    config: dict[str, Any]
    args: A

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
    stages: dict[str, Stage[Any]]

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


class TileArgs(StageArgs):
    """What :func:`~geoseg.pipeline.stages.run_tile` gets."""

    section: ClassVar[type[Strict]] = TileStage
    scenes: list[str | SceneSource]
    labels: Path | None
    out: Path
    cfg: TileConfig
    skip_bad: bool

    @classmethod
    def resolve(cls, section: TileStage, ctx: _Resolver) -> Stage[TileArgs]:
        from geoseg.tile import TileConfig

        t = section
        params = {**t.params, **({"aoi": str(ctx.inp(t.params["aoi"]))}  # an input: beside the pipeline
                                 if isinstance(t.params.get("aoi"), str) else {})}
        cfg = _params(TileConfig, "tile.params", ctx.inp(t.config) if t.config else None, params, ctx.path)
        given = ctx.scenes(t.scenes)
        a = cls(scenes=ctx.sources(given, t.asset, t.stac_search), labels=ctx.inp(t.labels) if t.labels else None,
                out=ctx.out(t.out), cfg=cfg, skip_bad=t.skip_bad)
        inputs = ctx.local(given) + ([a.labels] if a.labels else []) + ([Path(cfg.aoi)] if cfg.aoi else [])
        return ctx.stage("tile", inputs, [a.out], a, skip_bad=t.skip_bad,
                         params=cfg.model_dump(mode="json", exclude={"aoi"}), **ctx.remote(a.scenes),
                         **ctx.catalog(t.asset, t.stac_search))


class TrainArgs(StageArgs):
    """What :func:`~geoseg.pipeline.stages.run_train` gets."""

    section: ClassVar[type[Strict]] = TrainStage
    patches: Path
    out: Path
    cfg: TrainConfig

    @classmethod
    def resolve(cls, section: TrainStage, ctx: _Resolver) -> Stage[TrainArgs]:
        from geoseg.train import TrainConfig

        r = section
        tcfg = _params(TrainConfig, "train.params", ctx.inp(r.config) if r.config else None,
                       r.params, ctx.path)
        if r.epochs is not None:
            tcfg = tcfg.model_copy(update={"epochs": r.epochs})
        a = cls(patches=ctx.made("train.patches", r.patches, "tile"), out=ctx.out(r.out), cfg=tcfg)
        return ctx.stage("train", [a.patches], [a.out], a, config=tcfg.model_dump(mode="json"))


class PredictArgs(StageArgs):
    """What :func:`~geoseg.pipeline.stages.run_predict` gets."""

    section: ClassVar[type[Strict]] = PredictStage
    scenes: list[str | SceneSource]
    model: Path
    out: Path
    cfg: PredictConfig

    @classmethod
    def resolve(cls, section: PredictStage, ctx: _Resolver) -> Stage[PredictArgs]:
        from geoseg.predict import PredictConfig

        p = section
        params = dict(p.params)
        if isinstance(params.get("prob_out"), str):  # an output: relative to workdir
            params["prob_out"] = str(ctx.out(params["prob_out"]))
        if isinstance(params.get("aoi"), str):  # an input: relative to the pipeline file
            params["aoi"] = str(ctx.inp(params["aoi"]))
        pcfg = _params(PredictConfig, "predict.params", None, params, ctx.path)
        given = ctx.scenes(p.scenes)
        a = cls(scenes=ctx.sources(given, p.asset, p.stac_search),
                model=ctx.made("predict.model", p.model, "train"), out=ctx.out(p.out), cfg=pcfg)
        aoi = [Path(pcfg.aoi)] if pcfg.aoi else []
        return ctx.stage("predict", [*ctx.local(given), a.model, *aoi], [a.out], a,
                         params=pcfg.model_dump(mode="json", exclude={"prob_out", "aoi"}),
                         prob_out=ctx.rel(Path(pcfg.prob_out) if pcfg.prob_out else None)[0],
                         **ctx.remote(a.scenes), **ctx.catalog(p.asset, p.stac_search))


class EvaluateArgs(StageArgs):
    """What :func:`~geoseg.pipeline.stages.run_evaluate` gets (None: that output is off)."""

    section: ClassVar[type[Strict]] = EvaluateStage
    pred: Path
    truth: Path
    scenes: list[str | SceneSource]
    json_out: Path | None
    quicklook: Path | None
    clip: bool
    aoi: Path | None
    iou: float
    class_field: str
    score_field: str
    boundary_width: float | None
    multipart: str
    max_side: int

    @classmethod
    def resolve(cls, section: EvaluateStage, ctx: _Resolver) -> Stage[EvaluateArgs]:
        e, stages, path = section, ctx.stages, ctx.path
        predict = stages.get("predict")
        scenes: list[str | SceneSource] = (list(ctx.scenes(e.scenes)) if e.scenes is not None
                  else list(predict.args.scenes) if isinstance(predict, Stage)
                  and isinstance(predict.args, PredictArgs) else [])
        if not scenes and (e.clip or e.quicklook):
            raise ConfigError(f"'evaluate.scenes' is missing in {path}: the quick-look and 'clip' "
                              "need the scenes; set it, declare a predict stage, or set "
                              "quicklook: null and clip: false")
        json_out = ctx.out(e.json_out) if e.json_out else None
        quicklook = ctx.out(e.quicklook) if e.quicklook else None
        settings = e.model_dump(exclude={"truth", "pred", "scenes", "json_out", "quicklook", "aoi"})
        aoi = ctx.inp(e.aoi) if e.aoi else None
        a = cls(pred=ctx.made("evaluate.pred", e.pred, "predict"), truth=ctx.inp(e.truth),
                scenes=scenes, json_out=json_out, quicklook=quicklook, aoi=aoi, **settings)
        outs = [o for o in (json_out, quicklook) if o is not None]
        inputs = [a.pred, a.truth, *([aoi] if aoi else []), *ctx.local(scenes)]
        return ctx.stage("evaluate", inputs, outs, a, **settings, **ctx.remote(scenes))


# The stage kinds, in run order: each one's section of the pipeline file is
# ``ARGS[kind].section``; its runner is ``geoseg.pipeline.stages.RUNNERS[kind]``.
ARGS: dict[str, type[StageArgs]] = {"tile": TileArgs, "train": TrainArgs, "predict": PredictArgs,
                                    "evaluate": EvaluateArgs}
assert tuple(ARGS) == STAGES, "ARGS lists the stage kinds of geoseg.pipeline.schema.STAGES, in order"


@dataclass
class _Resolver:
    """Resolves the paths of a pipeline file's stages; holds the stages resolved so far."""

    path: Path
    root: Path
    workdir: Path
    stages: dict[str, Stage[Any]] = field(default_factory=dict)

    def inp(self, p: str) -> Path:
        """An input path: relative to the pipeline file's folder."""
        return Path(os.path.normpath(self.root / Path(p).expanduser()))

    def scenes(self, items: Sequence[str]) -> list[str]:
        """Scene inputs: a URL or GDAL path as written, a local path relative to the file's folder.

        A pattern (``scenes/*.tif``) gives the files it matches now, so a file added to
        it changes the stage's parameters and runs the stage again.
        """
        from geoseg.io.sources import is_remote, matching_files, without_mosaic_tiles

        out: list[str] = []
        for s in items:
            if is_remote(s) or not glob.has_magic(s) or self.inp(s).exists():
                out.append(s if is_remote(s) else str(self.inp(s)))
                continue
            hits = matching_files(str(self.inp(s)))
            if not hits:
                raise ConfigError(f"scenes pattern {s} (relative to the pipeline file's folder) matches no file; "
                                  "check the pattern")
            out.extend(map(str, without_mosaic_tiles(hits, s)))  # as list_scenes treats a pattern
        return out

    @staticmethod
    def sources(given: list[str], asset: str | None, search: StacSearch | None) -> list[str | SceneSource]:
        """The scenes a stage reads: ``given`` as written, or the STAC items' assets.

        With ``asset`` or ``stac_search`` the STAC documents are read now (an item's asset,
        named by its id) and the search's items follow; their URLs are in the digest.
        """
        if asset is None and search is None:
            return list(given)
        from geoseg.io.sources import list_scenes

        found: list[str | SceneSource] = list(list_scenes(given, asset=asset)) if given else []
        if search is not None:
            from geoseg.io.stac import search_scenes

            found += search_scenes(search.url, bbox=search.bbox, datetime=search.datetime,
                                   collections=search.collections, max_items=search.max_items, asset=asset)
        return found

    @staticmethod
    def catalog(asset: str | None, search: StacSearch | None) -> dict[str, Any]:
        """The catalogue keys for the digest (none when unset: older digests stay valid)."""
        return {k: v for k, v in (("asset", asset),
                                  ("stac_search", search.model_dump(mode="json") if search else None)) if v}

    @staticmethod
    def local(scenes: Sequence[str | SceneSource]) -> list[Path]:
        """The local ones of resolved scenes: stage inputs whose mtime the skip rules compare."""
        from geoseg.io.sources import is_remote

        paths = [s.source if isinstance(s, SceneSource) else s for s in scenes]
        return [Path(p) for p in paths if not is_remote(p)]

    @staticmethod
    def remote(scenes: Sequence[str | SceneSource]) -> dict[str, Any]:
        """``{"remote": [[url, identity]...]}`` for the digest (empty without remote scenes).

        A remote scene has no mtime here: its identity (size, ETag, Last-Modified,
        :func:`geoseg.io.sources.remote_stamp`) is part of the stage's parameters, so a
        file replaced at its URL runs the stage again.
        """
        from geoseg.io.sources import is_remote, remote_stamp

        urls = [u for u in (s.source if isinstance(s, SceneSource) else s for s in scenes) if is_remote(u)]
        return {"remote": [[u, remote_stamp(u)] for u in urls]} if urls else {}

    def out(self, p: str) -> Path:
        """An output path: relative to ``workdir``."""
        return Path(os.path.normpath(self.workdir / Path(p).expanduser()))

    def rel(self, *ps: Path | None) -> list[str | None]:
        """Paths relative to the file's folder: digests of a moved project stay the same."""
        return [None if p is None else os.path.relpath(p, self.root) for p in ps]

    def made(self, key: str, value: str | None, by: str) -> Path:
        """``value`` as an input, else the first output of the ``by`` stage."""
        if value is not None:
            return self.inp(value)
        if by not in self.stages:
            raise ConfigError(f"'{key}' is missing in {self.path}: set it, or declare a {by} stage")
        return self.stages[by].outputs[0]

    def stage(self, name: str, inputs: list[Path], outputs: list[Path], args: A,
              **cfg: Any) -> Stage[A]:
        """The :class:`Stage`; its digest covers the paths (relative) and ``cfg``."""
        config = {"inputs": self.rel(*inputs), "outputs": self.rel(*outputs), **cfg}
        return Stage(name, inputs, outputs, config, args)


def load_pipeline(path: str | Path) -> Pipeline:
    """Read and validate a pipeline file, resolving paths and stage parameters.

    Args:
        path: the pipeline YAML file.

    Returns:
        A :class:`Pipeline`; each stage's ``args`` is its kind's :class:`StageArgs` model.

    Raises:
        ConfigError: unreadable file, unknown key (named with its file), bad value, or a
            stage input that is neither in the file nor made by an earlier stage.
    """
    path = Path(path)
    spec = validate(PipelineFile, read_yaml(path), str(path))
    root = path.absolute().parent
    ctx = _Resolver(path, root, Path(os.path.normpath(root / spec.workdir)))
    for name, kind in ARGS.items():
        section = getattr(spec, name)
        if section is not None:
            ctx.stages[name] = kind.resolve(section, ctx)
    return Pipeline(path, ctx.workdir, spec.scheduler, spec.cluster, ctx.stages)
