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
    aoi: str | None = Field(None, description="compare only inside the polygons of this vector file")
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
        check_scheduler(value, connect=False)  # a file may name a cluster started later
        return value

    @model_validator(mode="after")
    def _coherent(self) -> PipelineFile:
        if all(getattr(self, s) is None for s in STAGES):
            raise ValueError(f"no stage declared; add one of {', '.join(STAGES)}")
        if self.cluster is not None and self.scheduler not in LOCAL_SCHEDULERS:
            raise ValueError("give either 'cluster' or a scheduler address, not both")
        return self
