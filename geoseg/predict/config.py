"""The parameters of `geoseg predict`: each default lives here, once.

The CLI's options default to None and fall back to these fields; the TensorRT profiles
of :mod:`geoseg.export.tensorrt` are tuned for the defaults read from here too.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from geoseg.config import Strict


class PredictConfig(Strict):
    """Parameters of `geoseg predict`."""

    budget: Annotated[float, Field(gt=0, le=1)] | Literal["auto"] | None = Field(
        None, description="share of cells run by FF (None: the model's deadline, else 'auto' when the "
        "model is calibrated, else its budget); 1.0 is dense "
        "sliding-window inference; 'auto': the cells whose utility clears the model's calibrated threshold")
    deadline_ms: float | None = Field(None, gt=0, description="per scene: the K it allows")
    backend: Literal["torch", "onnx", "tensorrt"] = "torch"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    block: int = Field(2048, ge=16, description="block side in px (rounded to the model grid)")
    watershed_halo: int = Field(256, ge=0, description="px around a block seen by the watershed")
    band_indexes: tuple[int, ...] | None = Field(None, description="1-based bands to read, e.g. 1,1,1")
    simplify: float = Field(0.5, ge=0, description="topology-preserving, in metres")
    min_area: float = Field(4.0, ge=0, description="smallest polygon kept, in m²")
    gsd: Literal["native", "model"] | Annotated[float, Field(gt=0)] = Field(
        "model", description="ground pixel size scenes are read at: 'model' (the training chips' GSD "
        "recorded in the checkpoint; native when it has none), 'native', or metres per pixel")
    tta: Literal["none", "flip", "d4"] = Field("none", description="test-time augmentation of the "
                                               "dense maps: none, flip (2 views) or d4 (8 views)")
    ff_batch: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto", description="FF cell tiles per model call, or 'auto': chosen from the memory available by "
        "a probe of the FF call, halved when the GPU runs out of memory (geoseg.predict.memory)")
    max_memory: int | None = Field(None, gt=0, description="bytes this run may hold in RAM (e.g. '8GiB'): "
                                   "bounds the FF batch and the Dask threads of a local run")
    prob_out: str | None = Field(None, description="extent probabilities as a COG")
    aoi: str | None = Field(None, description="vector file of polygons: only the blocks near them are read, "
                            "and only the objects that meet them are written, whole (geoseg.predict.area)")
    regularize: bool | tuple[str, ...] | None = Field(
        None, description="square outlines: true for every class, or the classes to square "
        "(None: the model's postprocess.regularize)")
    regularize_tolerance: float = Field(1.0, gt=0, description="regularization: steps smaller "
                                        "than this are squared away, in metres")
    overlaps: Literal["once", "all"] = Field(
        "once", description="objects where scenes overlap: 'once' (the polygon of the scene that sees "
        "it deeper inside; geoseg.predict.overlaps) or 'all' (one polygon per scene)")

    crs: str | None = Field(None, description="CRS the polygons are written in (EPSG:4326, a UTM zone, a WKT); "
                            "None: the first scene's (geoseg.io.outcrs)")

    @field_validator("crs")
    @classmethod
    def _crs(cls, value: str | None) -> str | None:
        from geoseg.io.outcrs import check_crs

        return check_crs(value)

    @field_validator("prob_out")
    @classmethod
    def _geotiff(cls, value: str | None) -> str | None:
        """A GeoTIFF's name: a name without ``.tif`` wrote a file QGIS's raster dialog does not list."""
        if value and not value.lower().endswith((".tif", ".tiff")):
            raise ValueError("should end in .tif or .tiff: the probabilities are written as a GeoTIFF")
        return value

    @field_validator("max_memory", mode="before")
    @classmethod
    def _size(cls, value: object) -> object:
        """``8GiB``, ``512MiB``, ``8GB``... as bytes (:func:`geoseg.predict.memory.parse_size`)."""
        if isinstance(value, str):
            from geoseg.predict.memory import parse_size

            return parse_size(value, "max_memory")
        return value


def default(name: str) -> object:
    """The default of one field of :class:`PredictConfig` (for help texts)."""
    return PredictConfig.model_fields[name].default
