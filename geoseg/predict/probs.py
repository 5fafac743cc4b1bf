"""``geoseg predict --prob-out``: the extent probability raster of each scene, as a COG.

Written after the polygons' blocks, from the per-block probability caches; a record in
the cache (:data:`PROBS_WRITTEN`) lets a rerun after a kill replace the files this same
job wrote without ``--overwrite``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio

from geoseg.io.atomic import atomic_path
from geoseg.io.npy import map_npy
from geoseg.predict.config import PredictConfig
from geoseg.predict.plan import BlockPlan


def prob_paths(cfg: PredictConfig, plans: Sequence[BlockPlan]) -> list[Path]:
    """The probability rasters of ``--prob-out``: the name itself for one scene, NAME_<scene> for several."""
    if not cfg.prob_out:
        return []
    base = Path(cfg.prob_out).resolve()  # absolute: the record below holds the same path from any directory
    return [base if len(plans) == 1 else base.with_name(f"{base.stem}_{p.scene.name}{base.suffix}") for p in plans]


#: In the cache: the ``--prob-out`` files this job has written, so that a rerun after a kill
#: between them and ``--out`` replaces them without ``--overwrite``.
PROBS_WRITTEN = "prob_out.json"


def probs_written(cache: Path, stamp: str) -> set[str]:
    """The probability rasters a killed run of the same job (``stamp``) wrote; empty if none."""
    try:
        rec = json.loads((cache / PROBS_WRITTEN).read_text())
    except (OSError, ValueError):
        return set()
    return set(rec.get("paths", [])) if isinstance(rec, dict) and rec.get("stamp") == stamp else set()


def write_probs(plan: BlockPlan, path: Path) -> None:
    """Extent probabilities of a scene, assembled block by block, as a COG.

    uint8 0-255 with GDAL scale 1/255 and offset 0 (QGIS shows 0-1), and an internal mask:
    the scene's valid pixels (nodata, masked, and NaN/inf in float scenes are masked).
    """
    from rasterio.shutil import copy as rio_copy

    from geoseg.io.rasters import open_scene, valid_mask

    s = plan.scene
    tmp_tif = plan.cache / "probs_full.tif"
    profile = {"driver": "GTiff", "width": s.width, "height": s.height, "count": 1,
               "dtype": "uint8", "crs": s.rio_crs, "transform": s.affine, "tiled": True,
               "blockxsize": 256, "blockysize": 256, "compress": "deflate"}
    nbh, nbw = plan.blocks_shape
    floating = np.issubdtype(np.dtype(s.dtype), np.floating)
    # both writes inside: a full disk while assembling is an error naming --prob-out too
    with atomic_path(path, what="--prob-out") as tmp:
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(tmp_tif, "w", **profile) as dst, \
                open_scene(s) as src:
            for bi in range(nbh):
                for bj in range(nbw):
                    core = plan.core(bi, bj)
                    if not plan.computed(bi, bj):  # away from the --aoi: masked
                        dst.write_mask(np.zeros((int(core.height), int(core.width)), np.uint8), window=core)
                        continue
                    dst.write(map_npy(plan.path("probs", bi, bj))[0], 1, window=core)
                    mask = src.dataset_mask(window=core)
                    if floating:
                        mask = valid_mask(src.read(plan.band_indexes, window=core), mask)
                    dst.write_mask(np.where(mask, 255, 0).astype(np.uint8), window=core)
            dst.scales, dst.offsets = (1 / 255,), (0.0,)
            dst.update_tags(1, scale="1/255", meaning="probability of object extent")
        rio_copy(tmp_tif, tmp, driver="COG", compress="deflate", overview_resampling="average")
