"""A scene's predicted maps as a georeferenced xarray Dataset, read lazily by Dask chunks.

For notebooks and Python pipelines that want arrays rather than polygons:

    from geoseg.maps import predict_maps
    ds = predict_maps("data/sample/kampala_blockB_z20.tif", "outputs/demo/run", "maps/")
    ds.probability.where(ds.instance > 0).mean().compute()

The Dataset has two variables on the grid the model saw (the scene's, or the one
``--gsd`` resampled it to), with the scene's CRS (``ds.rio.crs``) and coordinates:

- ``probability`` (float32, 0-1, NaN outside the scene's valid pixels): the extent
  probability, read from the ``--prob-out`` COG that predict wrote (rioxarray applies the
  COG's scale and mask);
- ``instance`` (int32, 0 background): the predicted polygons burnt in, one id per polygon
  (its row in the polygon file + 1), rasterized chunk by chunk only when computed.

Nothing is read until a value is computed, so a large scene costs memory per chunk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from geoseg.errors import InputRasterError, InputVectorError

#: Default chunk side (pixels) of the lazy arrays.
CHUNK = 1024


def open_maps(probabilities: str | Path, polygons: str | Path | None = None, *,
              chunks: int = CHUNK) -> Any:
    """The ``probability`` (and ``instance``) maps of a predicted scene, lazily.

    Args:
        probabilities: a ``--prob-out`` COG of `geoseg predict`.
        polygons: the polygons predict wrote for the same scene (any vector file); None: no
            ``instance`` variable.
        chunks: side of the Dask chunks, in pixels.

    Returns:
        An ``xarray.Dataset`` (see the module doc).

    Raises:
        InputRasterError: the COG cannot be read.
        InputVectorError: the polygons cannot be read or have no CRS.
    """
    import rioxarray
    import xarray as xr
    from rasterio.errors import RasterioError

    path = Path(probabilities)
    try:
        da: Any = rioxarray.open_rasterio(path, chunks={"band": 1, "y": chunks, "x": chunks},
                                     masked=True, mask_and_scale=True)
    except (RasterioError, OSError) as err:
        raise InputRasterError(f"cannot read the probabilities {path}: {err}; pass the --prob-out "
                               "file of geoseg predict") from None
    prob = da.isel(band=0, drop=True).astype(np.float32).rename("probability")
    prob.attrs = {"long_name": "probability of object extent", "source": str(path)}
    ds = xr.Dataset({"probability": prob})
    if polygons is not None:
        ds["instance"] = instance_map(polygons, prob, chunks=chunks)
    return ds.rio.write_crs(da.rio.crs)


def instance_map(polygons: str | Path | Any, like: Any, *, chunks: int = CHUNK) -> Any:
    """Polygons burnt into the grid of ``like`` (a rioxarray DataArray), lazily by chunks.

    Args:
        polygons: a vector file or a GeoDataFrame (reprojected to ``like``'s CRS).
        like: the grid (``rio.transform()``, ``rio.crs``, y/x shape).
        chunks: side of the Dask chunks, in pixels.

    Returns:
        An int32 ``xarray.DataArray`` named ``instance``: 0 background, ``i + 1`` inside
        polygon ``i`` (later polygons over earlier ones where they overlap).
    """
    import dask.array as da
    import geopandas as gpd
    import xarray as xr

    if isinstance(polygons, str | Path):
        from geoseg.evaluate import read_polygons

        gdf = read_polygons(polygons, "polygon")
    else:
        gdf = polygons
    if gdf.crs is None:
        raise InputVectorError("the polygons have no CRS; set one (GeoDataFrame.set_crs) first")
    import shapely

    geoms = gpd.GeoSeries(gdf.geometry.to_numpy(), crs=gdf.crs).to_crs(like.rio.crs).to_numpy()
    tree = shapely.STRtree(geoms)  # built once; each chunk queries it for the polygons it touches
    transform = like.rio.transform()
    h, w = like.shape[-2:]
    lazy = da.map_blocks(_burn, dtype=np.int32, chunks=(_splits(h, chunks), _splits(w, chunks)),
                         tree=tree, transform=transform, meta=np.empty((0, 0), np.int32))
    out = xr.DataArray(lazy, coords={"y": like.y, "x": like.x}, dims=("y", "x"), name="instance",
                       attrs={"long_name": "instance id (polygon row + 1), 0 background"})
    return out.rio.write_crs(like.rio.crs)


def _splits(n: int, chunk: int) -> tuple[int, ...]:
    return tuple(min(chunk, n - i) for i in range(0, n, chunk)) or (0,)


def _burn(block_info: dict[Any, Any] | None = None, *, tree: Any, transform: Any) -> np.ndarray:
    """One chunk of :func:`instance_map`: the polygons that touch it, rasterized with their ids."""
    from rasterio.features import rasterize
    from rasterio.windows import Window
    from rasterio.windows import transform as window_transform

    from geoseg.io.rasters import window_footprint

    assert block_info is not None
    (r0, r1), (c0, c1) = block_info[None]["array-location"]
    win = Window(c0, r0, c1 - c0, r1 - r0)
    # the chunk's four corners through the full affine (a rotated grid's chunk is no box)
    hit = np.sort(tree.query(window_footprint(win, transform), predicate="intersects"))
    if not len(hit):
        return np.zeros((r1 - r0, c1 - c0), np.int32)
    return rasterize(((tree.geometries[i], int(i) + 1) for i in hit), out_shape=(r1 - r0, c1 - c0),
                     transform=window_transform(win, transform), fill=0, dtype="int32")


def predict_maps(scene: str | Path, model: str | Path, out_dir: str | Path, cfg: Any = None, *,
                 chunks: int = CHUNK, scheduler: Any = "threads", progress: bool | None = None) -> Any:
    """Predict one scene and return its maps (:func:`open_maps`).

    Writes ``out_dir/<scene stem>.gpkg`` and ``out_dir/<scene stem>_prob.tif`` (replacing
    earlier ones: the maps always come from this model and these options).

    Args:
        scene: a raster file or URL.
        model: run directory, checkpoint or export directory.
        out_dir: folder for the polygons and the probability COG.
        cfg: a :class:`~geoseg.predict.PredictConfig` (its ``prob_out`` is set here).
        chunks: side of the Dask chunks of the returned arrays.
        scheduler: Dask scheduler of the prediction (as :func:`geoseg.predict.predict`).
        progress: show a progress bar (None: on a TTY).
    """
    from geoseg.io.sources import scene_name
    from geoseg.predict import PredictConfig, predict

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = scene_name(str(scene))
    prob, polys = out / f"{stem}_prob.tif", out / f"{stem}.gpkg"
    cfg = (cfg or PredictConfig()).model_copy(update={"prob_out": str(prob)})
    predict([scene], model, polys, cfg, scheduler=scheduler, overwrite=True, progress=progress)
    return open_maps(prob, polys, chunks=chunks)
