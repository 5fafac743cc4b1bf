"""Finding and inspecting rasters.

Nothing here reads pixels of a whole scene: :func:`inspect_scene` opens the file and
reads its metadata only, so that bad inputs are found before any output is written.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from affine import Affine
from pyproj import CRS as ProjCRS
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from geoseg.errors import InputRasterError, first_line
from geoseg.io.alpha import alpha_bands
from geoseg.io.encoding import Scaling, band_meaning, band_scaling, catalogued
from geoseg.io.folders import prj_hint
from geoseg.io.ground import check_ground_pixel
from geoseg.io.sources import (
    REMOTE_HINT,
    SceneSource,
    is_remote,
    open_raster,
    remote_identity,
    remote_stamp,
    scene_name,
)

# rasterio.features.shapes() / rasterize() on arrays (pixel coordinates: geoseg places the
# results itself) under Dask's threads scheduler sometimes report their temporary in-memory
# raster as not georeferenced although the output is right (tests/test_tiling.py checks
# threads == sync): noise, filtered once here for tiling and vectorizing.
warnings.filterwarnings("ignore", category=NotGeoreferencedWarning, module="rasterio.features")

#: Relative GSD difference under which a scene is read on its own grid (see SceneInfo.at_gsd).
GSD_TOLERANCE = 0.05


@dataclass(frozen=True)
class SceneInfo:
    """Metadata of one scene, enough to plan windows without reading pixels.

    Attributes:
        source: the raster: a local path, or a URL / GDAL path (:mod:`geoseg.io.sources`).
        name: the scene name used in outputs (the file stem, or the STAC item id).
        width: columns.
        height: rows.
        count: band count, without an alpha band (the mask: RGBA is 3 data bands).
        dtype: numpy dtype name of the bands.
        crs: CRS as a string (``EPSG:nnnn`` when it has one, else WKT).
        transform: affine transform, GDAL order is not used: ``Affine`` order (a..f).
        nodata: nodata value or None.
        has_mask: whether some pixels can be invalid (nodata, per-dataset mask or alpha).
        gsd: ground sampling distance in metres of this grid's pixel (geodesic, the larger
            side at the centre); NaN when not measured.
        sides: ground width and height in metres of this grid's pixel (None: square, of
            ``gsd``); they differ for pixels that are not square on the ground (EPSG:4326
            with equal steps in degrees far from the equator), see :mod:`geoseg.io.ground`.
        stretch: this grid's pixel width and height over the file's ((1, 1): the file's own
            grid). Above 1 the scene is read coarser than stored, below 1 finer; see
            :meth:`at_gsd` and :func:`open_scene`. ``width``, ``height`` and ``transform``
            are this grid's.
        identity: of a remote file, its version when inspected (ETag, Last-Modified,
            size: :func:`geoseg.io.sources.remote_identity`); reads in a process that saw
            another version at the URL drop GDAL's cache first. Empty for local files.
        scaling: the data bands' declared (scale, offset); () when none (:mod:`geoseg.io.encoding`).
        meaning: what each data band declares it holds (``"red"``, ``"b04"``; ``""``: nothing).
    """

    source: str
    name: str
    width: int
    height: int
    count: int
    dtype: str
    crs: str
    transform: tuple[float, float, float, float, float, float]
    nodata: float | None
    has_mask: bool
    gsd: float = float("nan")
    sides: tuple[float, float] | None = None
    stretch: tuple[float, float] = (1.0, 1.0)
    identity: str = ""
    scaling: Scaling = ()
    meaning: tuple[str, ...] = ()

    @property
    def path(self) -> Path:
        """The source as a local path (a URL is not one: use :attr:`source`)."""
        return Path(self.source)

    @property
    def affine(self) -> Affine:
        """The transform as an :class:`affine.Affine`."""
        return Affine(*self.transform)

    @property
    def rio_crs(self) -> CRS:
        """The CRS as a :class:`rasterio.crs.CRS`."""
        return CRS.from_user_input(self.crs)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(minx, miny, maxx, maxy) in the scene CRS (of the true footprint when rotated)."""
        minx, miny, maxx, maxy = self.footprint.bounds
        return minx, miny, maxx, maxy

    @property
    def footprint(self) -> shapely.Polygon:
        """The scene's true outline in its CRS (rotated or skewed grids included)."""
        return window_footprint(Window(0, 0, self.width, self.height), self.affine)

    @property
    def resample(self) -> float:
        """This grid's pixel side over the file's (the geometric mean of :attr:`stretch`'s two)."""
        return math.sqrt(self.stretch[0] * self.stretch[1])

    @property
    def moved(self) -> bool:
        """Whether this grid is not the file's own (the scene is read through a warp)."""
        return self.stretch != (1.0, 1.0)

    @property
    def pixel_text(self) -> str:
        """The ground pixel for messages: ``0.3`` (m, square), or ``0.18 x 0.3`` (width x height)."""
        w, h = self.sides or (self.gsd, self.gsd)
        return f"{self.gsd:.3g}" if abs(w / h - 1.0) <= GSD_TOLERANCE else f"{w:.3g} x {h:.3g}"

    def at_gsd(self, gsd: float | None, tolerance: float = GSD_TOLERANCE) -> SceneInfo:
        """This scene on a grid of square ground pixels of ``gsd`` metres (same CRS, origin and rotation).

        ``None`` is the scene's own GSD (the larger side of its pixel). A scene whose pixel
        sides are both within ``tolerance`` (relative) of the GSD, or an unmeasured scene,
        is returned as it is: resampling by 2 % costs a warp and gains nothing. A pixel that
        is not square on the ground (:mod:`geoseg.io.ground`) is resampled along each side
        to the GSD, so no model sees its objects stretched, even at ``None``. The new grid
        covers the whole scene (its last row and column may pass the edge by less than
        one pixel; :func:`open_scene` marks that part invalid).

        Examples:
            >>> from rasterio.transform import from_origin
            >>> s = SceneInfo(Path("a.tif"), "a", 1000, 600, 3, "uint8", "EPSG:32636",
            ...               tuple(from_origin(0, 0, 0.15, 0.15))[:6], None, False, gsd=0.15)
            >>> t = s.at_gsd(0.5)
            >>> (t.width, t.height, round(t.transform[0], 3), round(t.resample, 3))
            (300, 180, 0.5, 3.333)
            >>> s.at_gsd(0.152) is s, s.at_gsd(None) is s
            (True, True)
            >>> wide = replace(s, sides=(0.075, 0.15))  # pixels half as wide as tall on the ground
            >>> t = wide.at_gsd(None)
            >>> (t.width, t.height, t.stretch, t.sides)
            (500, 600, (2.0, 1.0), (0.15, 0.15))
        """
        if not np.isfinite(self.gsd):
            return self
        target = self.gsd if gsd is None else float(gsd)
        w, h = self.sides or (self.gsd, self.gsd)
        if abs(w / target - 1.0) <= tolerance and abs(h / target - 1.0) <= tolerance:
            return self
        fx, fy = _snap_ratio(target / w), _snap_ratio(target / h)
        return replace(
            self, width=max(1, math.ceil(self.width / fx - 1e-6)),
            height=max(1, math.ceil(self.height / fy - 1e-6)),
            transform=tuple(self.affine @ Affine.scale(fx, fy))[:6], gsd=target,
            sides=(w * fx, h * fy), stretch=(self.stretch[0] * fx, self.stretch[1] * fy))


def _snap_ratio(f: float, tolerance: float = 0.01) -> float:
    """``f``, or the whole ratio (n or 1/n) within ``tolerance`` of it.

    Ground pixel sizes are geodesic, so a 0.25 m UTM scene measures 0.2501 m: reading it
    at 0.5 m is a ratio of 2 exactly (pixel-aligned averaging), not 1.9993.
    """
    for n in range(1, 33):
        for r in (float(n), 1.0 / n):
            if abs(f / r - 1.0) <= tolerance:
                return r
    return f


@contextmanager
def open_scene(scene: SceneInfo) -> Iterator[Any]:
    """The scene's pixels on ``scene``'s grid: the file itself, or a warped view of it.

    When the scene was moved to another GSD (:meth:`SceneInfo.at_gsd`), reads go through a
    :class:`rasterio.vrt.WarpedVRT` with the scene's transform and size, so windows,
    decimated reads and masks work as on a file: ``average`` resampling when reading
    coarser, ``bilinear`` when finer; pixels past the file's edge are invalid (nodata, or
    an alpha band when the file has no nodata: its own, warped, or one added).
    """
    with open_raster(scene.source, scene.identity) as src:
        if not scene.moved:
            yield src
            return
        method = Resampling.average if max(scene.stretch) > 1 else Resampling.bilinear
        extra: dict[str, Any] = ({"nodata": src.nodata} if src.nodata is not None else  # an alpha band: warped too
                                 {} if ColorInterp.alpha in src.colorinterp else {"add_alpha": True})
        with WarpedVRT(src, crs=src.crs, transform=scene.affine, width=scene.width,
                       height=scene.height, resampling=method, **extra) as vrt:
            yield vrt


#: A float value of this magnitude or more is a fill value, invalid like NaN: GDAL writes
#: -3.4e38 (float32's lowest) where a float raster has no data, often without declaring it.
FILL = 1e30


def valid_mask(data: np.ndarray, dataset_mask: np.ndarray | None = None) -> np.ndarray:
    """Valid pixels of a (bands, rows, cols) read: the dataset mask, and usable in every band.

    NaN, ±inf and fill values (magnitude of :data:`FILL` or more: GDAL's float
    nodata -3.4e38, often not declared) are invalid data everywhere in geoseg, whether or
    not the raster declares a nodata value; ``dataset_mask`` (``src.dataset_mask()``,
    0 = invalid) covers nodata, per-dataset masks and alpha.

    Examples:
        >>> valid_mask(np.array([[[1.0, np.nan, np.inf, -3.4028235e38]]])).tolist()
        [[True, False, False, False]]
    """
    valid = (np.ones(data.shape[1:], dtype=bool) if dataset_mask is None
             else np.asarray(dataset_mask) > 0)
    if np.issubdtype(data.dtype, np.floating):
        valid &= (np.abs(data) < FILL).all(axis=0)
    return valid


def window_footprint(window: Window, transform: Affine) -> shapely.Polygon:
    """The outline of a pixel window: its four corners through the full affine.

    Unlike ``rasterio.windows.bounds`` (two corners, an axis-aligned box), this is right
    for rotated and skewed geotransforms too.

    Examples:
        >>> poly = window_footprint(Window(0, 0, 2, 1), Affine.rotation(90))
        >>> [tuple(round(v, 6) + 0.0 for v in xy) for xy in poly.exterior.coords][:4]
        [(0.0, 0.0), (0.0, 2.0), (-1.0, 2.0), (-1.0, 0.0)]
    """
    c0, r0 = float(window.col_off), float(window.row_off)
    c1, r1 = c0 + float(window.width), r0 + float(window.height)
    return shapely.Polygon([transform @ (c, r) for c, r in ((c0, r0), (c1, r0), (c1, r1), (c0, r1))])


def crs_to_string(crs: CRS) -> str:
    """``EPSG:nnnn`` when the CRS has an EPSG code, its WKT otherwise."""
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg is not None else crs.to_wkt()


@contextmanager
def no_georef_warning() -> Iterator[None]:
    """Silence rasterio's NotGeoreferencedWarning: :func:`check_grid` says it, with the fix."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        yield


def check_grid(path: str | Path, src: Any) -> None:
    """Refuse a raster that is not on a georeferenced grid, with the command that puts it on one.

    Scenes are read window by window through their geotransform. A raster georeferenced by
    ground control points or RPCs only (a raw satellite product) has none: GDAL gives it the
    identity transform, and reading it as such would put every polygon at pixel coordinates.

    Raises:
        InputRasterError: no geotransform (GCPs, RPCs or nothing), or a geotransform without a CRS.
    """
    if src.transform == Affine.identity():
        gcps, gcp_crs = src.gcps
        target = f" -t_srs {crs_to_string(gcp_crs)}" if gcp_crs else " -t_srs EPSG:<UTM zone>"
        if gcps:
            raise InputRasterError(
                f"{path} is georeferenced by {len(gcps)} ground control points only, not a grid; warp it "
                f"first: gdalwarp{target} {path} warped.tif")
        if src.rpcs:
            raise InputRasterError(
                f"{path} has RPCs only (a raw satellite product), not a grid; orthorectify it first: "
                f"gdalwarp -rpc -t_srs EPSG:<UTM zone> [-to RPC_DEM=dem.tif] {path} ortho.tif")
        raise InputRasterError(f"{path} has no geotransform; georeference it first (QGIS's Georeferencer, "
                               f"or gdal_translate -a_ullr XMIN YMAX XMAX YMIN -a_srs EPSG:... {path} out.tif)")
    if src.crs is None:
        raise InputRasterError(f"{path} has no CRS; assign one ({prj_hint(path)})")
    crs = ProjCRS.from_wkt(src.crs.to_wkt())
    if crs.is_engineering:  # LOCAL_CS: a site grid with no place on the Earth
        raise InputRasterError(
            f"{path} has a local engineering CRS ('{crs.name}'), which has no place on the Earth: its polygons "
            f"could not be placed in QGIS nor measured; assign its real CRS (gdal_edit.py -a_srs EPSG:... {path}) "
            "or georeference it")


def inspect_scene(scene: str | Path | SceneSource) -> SceneInfo:
    """Open a raster (a local file, a URL, a GDAL path) and return its metadata.

    Raises:
        InputRasterError: unreadable or corrupt, no CRS, no geotransform, or mixed dtypes;
            a remote scene that cannot be reached (one line naming the URL).
    """
    ref = scene if isinstance(scene, SceneSource) else SceneSource(str(scene), scene_name(scene))
    path, remote = ref.source, is_remote(ref.source)
    # HTTP(S): fails with the server's reason (404, refused) in one line
    identity = remote_identity(remote_stamp(path)) if remote else ""
    try:
        with no_georef_warning(), open_raster(path, identity) as src:
            check_grid(path, src)
            if len(set(src.dtypes)) != 1:
                raise InputRasterError(f"{path} mixes band types {src.dtypes}; convert it first")
            if ColorInterp.palette in src.colorinterp:  # values are indices into a colour table, not colours
                raise InputRasterError(f"{path} is a paletted image (a band of indices into a colour table); expand "
                                       f"it to RGB first: gdal_translate -expand rgb {path} rgb.tif")
            if src.dtypes[0].startswith("complex"):  # complex64/128, complex_int16 (CInt16)
                raise InputRasterError(f"{path} is {src.dtypes[0]} (complex: SAR single-look complex?); geoseg reads "
                                       "real values, and the imaginary part would be dropped: convert it to amplitude "
                                       "first (gdal_calc.py -A in.tif --calc='abs(A)' --type Float32)")
            flags = src.mask_flag_enums
            has_mask = any(MaskFlags.all_valid not in f for f in flags)
            count = src.count - len(alpha_bands(src, path))  # alpha bands come last
            scaling = band_scaling(src.scales, src.offsets, range(1, count + 1)) or catalogued(ref.scaling, count)
            # Touch the first block so that a truncated file fails here, not mid-run.
            src.read(1, window=((0, min(1, src.height)), (0, min(1, src.width))))
            sides, right_angle = check_ground_pixel(path, src.transform, src.crs, (src.height, src.width))
            return SceneInfo(
                source=path, name=ref.name, width=src.width, height=src.height,
                count=count, dtype=src.dtypes[0], crs=crs_to_string(src.crs), transform=tuple(src.transform)[:6],
                nodata=src.nodata, has_mask=has_mask, gsd=max(sides), identity=identity, scaling=scaling,
                sides=sides if right_angle else None,  # a sheared grid's pixels stay as stored
                meaning=band_meaning(src.colorinterp, src.descriptions, count))
    except InputRasterError:
        raise
    except (RasterioError, OSError) as err:
        msg = first_line(err)
        if remote:
            raise InputRasterError(f"cannot read remote scene {path}: {msg}; {REMOTE_HINT}, or pass "
                                   "--skip-bad") from None
        raise InputRasterError(f"cannot read raster {path}: {msg}; check the file (gdalinfo) or pass --skip-bad"
                               ) from None


@contextmanager
def read_errors(path: str | Path, win: Window) -> Iterator[None]:
    """Turn a failed read (a truncated or damaged file) into one error naming file and window.

    Raises:
        InputRasterError: what rasterio raised inside, with the file and the window.
    """
    try:
        yield
    except RasterioError as err:
        first = first_line(err, 120)
        where = f"{path}: cannot read pixels {int(win.col_off)},{int(win.row_off)} {int(win.width)}x{int(win.height)}"
        if is_remote(path):
            raise InputRasterError(f"{where} ({first}); the server failed or the file changed: "
                                   f"rerun (finished blocks are kept), or {REMOTE_HINT}") from None
        raise InputRasterError(
            f"{path}: cannot read pixels {int(win.col_off)},{int(win.row_off)} "
            f"{int(win.width)}x{int(win.height)} ({first}); the file is damaged or truncated: "
            "re-create or re-download it (gdalinfo -checksum finds the bad part)") from None


def inspect_scenes(
    paths: Sequence[str | Path | SceneSource], skip_bad: bool = False
) -> tuple[list[SceneInfo], list[tuple[str, str]]]:
    """Inspect every scene (local, remote, from STAC: :func:`geoseg.io.sources.list_scenes`) first.

    Returns:
        The good scenes, and (source, reason) of those skipped (only with ``skip_bad``).

    Raises:
        InputRasterError: the first bad scene, unless ``skip_bad``; the band files of one product
            (:func:`geoseg.io.bandfiles.check_band_files`).
    """
    good: list[SceneInfo] = []
    bad: list[tuple[str, str]] = []
    for p in paths:
        try:
            good.append(inspect_scene(p))
        except InputRasterError as err:
            if not skip_bad:
                raise
            bad.append((p.source if isinstance(p, SceneSource) else str(p), str(err)))
    from geoseg.io.bandfiles import check_band_files

    check_band_files(good)  # a Landsat folder: one file per band, each not a scene
    return good, bad
