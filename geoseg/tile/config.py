"""Parameters of `geoseg tile`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from geoseg.config import MAX_SEED, Strict


class TileConfig(Strict):
    """Parameters of `geoseg tile` (YAML section ``tile`` of a pipeline)."""

    size: int = Field(512, ge=8, description="chip side in pixels")
    overlap: int = Field(64, ge=0, description="pixels shared by neighbouring chips (unset: 64, or an "
                         "eighth of a size under 512)")
    min_valid: float = Field(0.5, ge=0.0, le=1.0, description="skip chips with less valid")
    val_fraction: float = Field(0.2, ge=0.0, le=1.0, description="share of split blocks in val")
    split_block: int = Field(4, ge=1, description="side of a split block, in chips")
    val_scenes: tuple[str, ...] = Field((), description="glob patterns of scenes wholly in val")
    class_field: str = "class"
    class_name: str = "object"
    gsd: float | None = Field(None, gt=0, description="resample chips to this many metres per "
                              "pixel (None: each scene's own; scenes within 5 % are not resampled)")
    aoi: str | None = Field(None, description="vector file of the labelled area's polygons: only the "
                            "windows meeting it are tiled, pixels beyond it masked (geoseg.tile.area)")
    compress: Literal["deflate", "lzw", "zstd", "none"] = "deflate"
    seed: int = Field(0, ge=0, le=MAX_SEED)

    @field_validator("class_field", "class_name")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be blank")
        return v

    @model_validator(mode="before")
    @classmethod
    def _default_overlap(cls, data: object) -> object:
        # an unset overlap follows a small size: `--size 64` alone tiles (before: 'overlap (64) must
        # be smaller than size (64)', for an option not given)
        if isinstance(data, dict) and data.get("overlap") is None and isinstance(data.get("size"), int):
            data = {**data, "overlap": min(64, max(0, data["size"]) // 8)}
        return data

    @model_validator(mode="after")
    def _overlap_below_size(self) -> TileConfig:
        if self.overlap >= self.size:
            raise ValueError(f"overlap ({self.overlap}) must be smaller than size ({self.size})")
        return self
