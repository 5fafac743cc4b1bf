"""Quick-look PNG of a scene with predicted and true outlines, for a glance without QGIS.

The scene is read decimated (``out_shape`` with ``Resampling.average``: GDAL uses COG
overviews when present), so a scene of any size costs about ``max_side``² pixels of
memory. The first three bands are stretched to RGB between their 2nd and 98th
percentiles (one band: grey); polygons are reprojected to the scene CRS and drawn as
outlines, truth in yellow and predictions in cyan, with a legend. Rendering uses the
Agg canvas directly (no pyplot state, safe in threads) and the PNG is written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import shapely
from affine import Affine
from rasterio.enums import Resampling
from rasterio.errors import RasterioError

from geoseg.errors import ConfigError, InputRasterError, InputVectorError
from geoseg.io.atomic import atomic_path
from geoseg.io.rasters import check_grid, no_georef_warning
from geoseg.io.sources import open_raster

#: Outline colours (RGB 0-255); the tests look for PRED_COLOR in the pixels.
PRED_COLOR = (0, 255, 255)
TRUTH_COLOR = (255, 215, 0)
#: Smaller scenes are drawn up to this long side (nearest neighbour), so outlines and
#: legend stay readable.
MIN_SIDE = 600
DPI = 100


def png_path(path: str | Path, what: str = "--quicklook") -> Path:
    """``path`` when it names a PNG; a quick-look is written as PNG whatever its name.

    Raises:
        ConfigError: another extension (``--quicklook scene.tif`` wrote a PNG over the scene).
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ConfigError(f"{what} {path}: a quick-look is a PNG image; give a name ending in .png")
    return path


def stretch(bands: np.ma.MaskedArray, low: float = 2.0, high: float = 98.0) -> np.ndarray:
    """Stretch (bands, rows, cols) to an RGB float image in [0, 1], masked pixels black.

    Each band is scaled between its ``low`` and ``high`` percentiles over valid pixels;
    one band becomes grey.

    Returns:
        (rows, cols, 3) float32.

    Examples:
        >>> img = stretch(np.ma.masked_array(np.arange(100.0).reshape(1, 10, 10)))
        >>> img.shape, float(img.min()), float(img.max())
        ((10, 10, 3), 0.0, 1.0)
    """
    data = np.ma.masked_invalid(np.ma.asarray(bands, dtype=np.float64))
    out: np.ndarray = np.zeros(data.shape, dtype=np.float32)
    for i, band in enumerate(data):
        valid = band.compressed()
        if valid.size == 0:
            continue
        lo, hi = np.percentile(valid, [low, high])
        scaled = (band.filled(lo) - lo) / (hi - lo if hi > lo else 1.0)
        out[i] = np.where(np.ma.getmaskarray(band), 0.0, np.clip(scaled, 0.0, 1.0))
    if out.shape[0] == 1:
        out = np.repeat(out, 3, axis=0)
    return np.moveaxis(out[:3], 0, -1)


def _frame(obj: gpd.GeoDataFrame | gpd.GeoSeries | str | Path | None, role: str) -> gpd.GeoSeries | None:
    if obj is None:
        return None
    if isinstance(obj, (str, Path)):
        from geoseg.evaluate import read_polygons

        obj = read_polygons(str(obj), role)
    assert not isinstance(obj, (str, Path))
    geoms = obj.geometry if isinstance(obj, gpd.GeoDataFrame) else obj
    if geoms.crs is None:
        raise InputVectorError(f"the {role} polygons have no CRS; set one with gdf.set_crs(...)")
    return geoms


def outline_segments(geoms: np.ndarray) -> list[np.ndarray]:
    """Every ring (exterior and holes) of the polygonal parts of ``geoms``, as (n, 2) arrays."""
    from geoseg.io.vectors import polygonal_parts

    polys, _ = polygonal_parts(geoms)
    rings = shapely.get_rings(polys)
    if len(rings) == 0:
        return []
    coords, idx = shapely.get_coordinates(rings, return_index=True)
    return np.split(coords, np.flatnonzero(np.diff(idx)) + 1)


#: The image, its CRS, the affine from that CRS to the drawing's coordinates, the image's
#: extent there (left, right, bottom, top), its interpolation and the PNG's (height, width).
Canvas = tuple[np.ndarray, Any, Affine, tuple[float, float, float, float], str, tuple[int, int]]


def _read_scene(scene: str, max_side: int, placed: bool) -> Canvas:
    """The scene stretched to RGB, drawn in its own pixel grid (see :data:`Canvas`).

    Polygons are drawn through the inverse of the scene's affine, so a rotated, skewed or
    south-up scene shows them on its pixels (a map-coordinate box would misplace them).
    With ``placed`` (polygons are drawn on it), a scene that is not on a georeferenced grid is
    an error (:func:`~geoseg.io.rasters.check_grid`): the polygons would be misplaced.
    """
    try:
        with no_georef_warning(), open_raster(scene) as src:
            if placed:
                check_grid(scene, src)
            long = max(src.width, src.height)
            side = min(max_side, max(long, MIN_SIDE))  # long side of the PNG
            width = max(1, round(src.width * side / long))
            height = max(1, round(src.height * side / long))
            shape = (min(height, src.height), min(width, src.width))  # never read more than needed
            indexes = [1, 2, 3] if src.count >= 3 else [1]
            data = src.read(indexes, out_shape=(len(indexes), *shape),
                            resampling=Resampling.average, masked=True)
            crs, to_pixels, size = src.crs, ~src.transform, (float(src.width), float(src.height))
    except RasterioError as err:
        raise InputRasterError(f"cannot read scene {scene}: {err}; check the file (gdalinfo)") from None
    return (stretch(data), crs, to_pixels, (0.0, size[0], size[1], 0.0),
            "nearest" if shape[0] < height else "antialiased", (height, width))


def _blank(layers: list[tuple[gpd.GeoSeries, Any, str]], max_side: int) -> Canvas:
    """A grey canvas over the polygons' extent (5 % margin), in the first layer's CRS."""
    crs = layers[0][0].crs
    boxes = [shapely.box(*g.to_crs(crs).total_bounds) for g, _, _ in layers if len(g)]
    if not boxes:
        raise InputVectorError("no polygon to draw and no scene; pass a scene or non-empty polygons")
    left, bottom, right, top = shapely.union_all(boxes).buffer(1e-9).bounds
    pad = 0.05 * max(right - left, top - bottom, 1e-9)
    left, bottom, right, top = left - pad, bottom - pad, right + pad, top + pad
    scale = max_side / max(right - left, top - bottom)
    shape = (max(1, round((top - bottom) * scale)), max(1, round((right - left) * scale)))
    return np.full((1, 1, 3), 0.25, np.float32), crs, Affine.identity(), (left, right, bottom, top), "nearest", shape


def quicklook(
    scene: str | Path | None,
    out_png: str | Path,
    *,
    pred: gpd.GeoDataFrame | str | Path | None = None,
    truth: gpd.GeoDataFrame | str | Path | None = None,
    max_side: int = 1500,
    title: str | None = None,
) -> Path:
    """Draw a scene with predicted and true polygon outlines into a PNG.

    Args:
        scene: raster file (any size: it is read decimated), or None to draw the
            polygons alone on a grey canvas over their extent.
        out_png: the PNG to write (atomically).
        pred: predicted polygons (GeoDataFrame or vector file), any CRS.
        truth: true polygons (GeoDataFrame or vector file), any CRS.
        max_side: long side of the PNG in pixels at most. Scenes smaller than 600 px
            are drawn enlarged to 600 px (or ``max_side`` if smaller).
        title: text in the top-left corner (default: the scene's file name).

    Returns:
        ``out_png`` as a Path.

    Raises:
        InputRasterError: the scene cannot be read, or is not on a georeferenced grid (no CRS, GCPs or RPCs
            only) while polygons are given.
        InputVectorError: a polygon file cannot be read or has no CRS.
        ConfigError: ``out_png`` does not end in ``.png``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    out_png = png_path(out_png, "quick-look")
    layers = [(g, c, name) for g, c, name in (
        (_frame(truth, "truth"), TRUTH_COLOR, "truth"), (_frame(pred, "prediction"), PRED_COLOR, "prediction"))
        if g is not None]
    if scene is None:
        if not layers:
            raise InputVectorError("a quick-look needs a scene or polygons to draw")
        img, crs, to_canvas, extent, interp, (height, width) = _blank(layers, max_side)
        label = "polygons"
    else:
        scene = str(scene)  # a URL keeps its two slashes
        img, crs, to_canvas, extent, interp, (height, width) = _read_scene(scene, max_side, bool(layers))
        label = scene.rsplit("/", 1)[-1].split("?")[0]

    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.imshow(img, extent=extent, aspect="auto", interpolation=interp)
    frame = shapely.box(min(extent[:2]), min(extent[2:]), max(extent[:2]), max(extent[2:]))
    m = np.asarray(to_canvas, dtype=np.float64).reshape(3, 3)[:2]  # rows (a, b, c), (d, e, f)
    handles = []
    for geoms, color, name in layers:
        g = shapely.transform(geoms.to_crs(crs).to_numpy(), lambda xy: xy @ m[:, :2].T + m[:, 2])
        g = g[shapely.intersects(g, frame)]  # those on the scene
        rgb = (color[0] / 255, color[1] / 255, color[2] / 255)
        ax.add_collection(LineCollection(outline_segments(g), colors=[rgb], linewidths=1.5))
        handles.append(Line2D([], [], color=rgb, linewidth=2, label=f"{name} ({len(g)})"))
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_axis_off()
    if handles:
        ax.legend(handles=handles, loc="lower right", fontsize=8, framealpha=0.8)
    ax.text(0.01, 0.99, title if title is not None else label, transform=ax.transAxes,
            ha="left", va="top", fontsize=9, color="white",
            bbox={"facecolor": "black", "alpha": 0.6, "linewidth": 0})
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    return out_png
