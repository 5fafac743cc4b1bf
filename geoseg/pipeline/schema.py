"""The sections of a pipeline file, as validated models (unknown keys are errors)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from geoseg.config import Strict
from geoseg.parallel import LOCAL_SCHEDULERS, check_scheduler

#: The stage kinds, in run order (``geoseg.pipeline.model.ARGS`` has one entry per kind).
STAGES = ("tile", "train", "predict", "evaluate")


def _as_tuple(value: Any) -> Any:
    return (value,) if isinstance(value, str) else value


class StacSearch(Strict):
    """``stac_search:`` a STAC API search whose items are scenes too (``--stac-search``)."""

    url: str
    bbox: tuple[float, float, float, float] | None = Field(None, description="west, south, east, north (degrees)")
    datetime: str | None = None
    collections: tuple[str, ...] = ()
    max_items: int | None = Field(None, ge=1)
    one_collection = field_validator("collections", mode="before")(_as_tuple)

    @field_validator("bbox")
    @classmethod
    def _ordered(cls, v: tuple[float, float, float, float] | None) -> tuple[float, float, float, float] | None:
        if v is not None and not (v[0] < v[2] and v[1] < v[3]):
            raise ValueError("bbox is west, south, east, north, with west < east and south < north")
        return v


class _Scenes(Strict):
    """Scene keys shared by tile and predict: files/folders/URLs/STAC JSON, ``asset``, ``stac_search``."""

    scenes: tuple[str, ...] = ()
    asset: str | None = Field(None, description="asset of STAC items (default: visual, else data)")
    stac_search: StacSearch | None = None
    one_scene = field_validator("scenes", mode="before")(_as_tuple)

    @model_validator(mode="after")
    def _some(self) -> _Scenes:
        if not self.scenes and self.stac_search is None:
            raise ValueError("give 'scenes' (files, folders, URLs or STAC JSON) or 'stac_search'")
        return self


class TileStage(_Scenes):
    """``tile:`` scenes + labels → chips (:func:`geoseg.tile.tile`)."""

    labels: str | None = None
    out: str = "patches"
    config: str | None = Field(None, description="TileConfig YAML; params override it")
    params: dict[str, Any] = Field(default_factory=dict, description="TileConfig keys")
    skip_bad: bool = False


class TrainStage(Strict):
    """``train:`` chips → run directory (:func:`geoseg.train.loop.train`)."""

    config: str | None = Field(None, description="TrainConfig YAML; params override it")
    params: dict[str, Any] = Field(default_factory=dict)
    patches: str | None = Field(None, description="default: the tile stage's out")
    out: str = "run"
    epochs: int | None = Field(None, ge=1)


class PredictStage(_Scenes):
    """``predict:`` scenes + model → polygons (:func:`geoseg.predict.stage.predict`)."""

    model: str | None = Field(None, description="default: the train stage's out")
    out: str = "buildings.gpkg"
    params: dict[str, Any] = Field(default_factory=dict, description="PredictConfig keys")


class EvaluateStage(Strict):
    """``evaluate:`` metrics JSON (as ``geoseg evaluate --json``), table, quick-look PNG."""

    truth: str
    pred: str | None = Field(None, description="default: the predict stage's out")
    scenes: tuple[str, ...] | None = Field(None, description="default: the predict stage's")
    clip: bool = Field(True, description="compare only inside the scenes' footprint")
    aoi: str | None = Field(None, description="compare only inside the polygons of this vector file")
    iou: float = Field(0.5, gt=0, le=1)
    class_field: str = "class"
    score_field: str = Field("score", description="the predictions' confidence column, for AP")
    boundary_width: float | None = Field(None, gt=0)
    multipart: Literal["parts", "whole"] = Field("parts", description="a MultiPolygon: one object per part, or one")
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
        check_scheduler(value, connect=False)  # a file may name a cluster started later
        return value

    @model_validator(mode="after")
    def _coherent(self) -> PipelineFile:
        if all(getattr(self, s) is None for s in STAGES):
            raise ValueError(f"no stage declared; add one of {', '.join(STAGES)}")
        if self.cluster is not None and self.scheduler not in LOCAL_SCHEDULERS:
            raise ValueError("give either 'cluster' or a scheduler address, not both")
        return self
