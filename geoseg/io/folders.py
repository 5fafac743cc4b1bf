"""The scenes a folder holds: rasters by extension, and images georeferenced beside them.

GeoTIFFs, VRTs, JPEG 2000, Erdas Imagine, netCDF and NITF files are scenes by their
extension. A PNG, JPEG or WebP is a scene when GDAL finds it on a grid: a world file
(``x.jgw``, ``x.pgw``, ``x.jpgw``, ``x.wld``) or a ``x.jpg.aux.xml`` beside it, as municipal
orthophotos are often delivered. Images without one (web-map tiles named ``z/x/y``, photos,
quick-looks) and formats this GDAL has no driver for (ECW, MrSID) are left out with a
warning that names them and what to do: before, every one of them was left out without
a word, so predict wrote the polygons of the other scenes only, and tile trained on less.
A folder whose rasters all lie in subfolders is refused with the recursive pattern to pass.
Hidden files (``._x.tif``, the AppleDouble files macOS leaves on shared drives) are not
scenes, as a glob's ``*`` skips them. The files beside a scene also answer a scene without
CRS (:func:`prj_hint`): an ESRI ``.prj`` that GDAL does not read for a GeoTIFF.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import Counter
from pathlib import Path

from geoseg.errors import InputRasterError, listed

#: Archives a scenes folder is often delivered as: extracted first (GDAL's /vsizip/ paths are not scenes).
ARCHIVES = (".zip", ".tar", ".tar.gz", ".tgz", ".7z", ".rar")

log = logging.getLogger(__name__)

#: Extensions taken from a folder as they are (explicit files may have any extension GDAL reads).
RASTER_SUFFIXES = frozenset({".tif", ".tiff", ".gtiff", ".vrt", ".jp2", ".img", ".nc", ".ntf", ".nitf"})
#: Image formats taken from a folder when they are georeferenced (a world file or ``.aux.xml``).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})
#: Raster formats of aerial deliveries that the GDAL in rasterio's wheels cannot read.
NO_DRIVER_SUFFIXES = frozenset({".ecw", ".sid"})


def georeferenced(path: Path, stems: Counter[str]) -> bool:
    """Whether GDAL reads an image on a grid (a geotransform, GCPs or RPCs) from it or its sidecars.

    Only images with another file of their stem beside them (a world file; ``stems``
    counts the folder's) or a ``.aux.xml`` are opened: a folder of ten thousand web-map
    tiles costs a listing.
    """
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioError

    if stems[path.stem.lower()] < 2 and not path.with_name(path.name + ".aux.xml").exists():
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                return not src.transform.is_identity or bool(src.gcps[0]) or bool(src.rpcs)
    except (RasterioError, OSError):
        return True  # a damaged image with a sidecar: taken, so that reading it says what is wrong


def folder_rasters(folder: Path) -> list[Path]:
    """The scenes of a folder (not its subfolders), sorted; warns of the images it leaves out.

    Raises:
        InputRasterError: the folder holds none, naming what it holds instead (images
            without georeferencing, rasters in subfolders and the pattern that takes them).
    """
    # hidden files are not scenes, as a shell's or glob's '*' skips them: macOS's '._x.tif' (AppleDouble)
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    found = [p for p in files if p.suffix.lower() in RASTER_SUFFIXES]
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    stems = Counter(p.stem.lower() for p in files)
    plain = [p for p in images if not georeferenced(p, stems)]
    found = sorted(found + [p for p in images if p not in plain])
    unread = [p for p in files if p.suffix.lower() in NO_DRIVER_SUFFIXES]
    packed = [p for p in files if p.name.lower().endswith(ARCHIVES)]  # orthophotos are often delivered zipped
    if plain:
        log.warning("%s: %d image(s) without georeferencing left out (%s): give each its grid, a world file or "
                    "gdal_translate -a_srs EPSG:nnnn -a_ullr ulx uly lrx lry x.png x.tif (web-map tiles: "
                    "their bounds follow from z/x/y)", folder, len(plain), listed((p.name for p in plain), 3))
    if unread:
        log.warning("%s: %d raster(s) left out (%s): this GDAL has no ECW or MrSID driver; convert them to "
                    "GeoTIFF with a GDAL that has one (QGIS's: gdal_translate -of COG x.sid x.tif)",
                    folder, len(unread), listed((p.name for p in unread), 3))
    if found:
        if packed:
            log.warning("%s: %d archive(s) left out (%s): extract them to take their rasters", folder, len(packed),
                        listed((p.name for p in packed), 3))
        warn_subfolders(folder, found)
        return found
    kinds: Counter[str] = Counter()  # the extensions of the rasters in subfolders (a SAFE's .jp2)
    deeper = []
    for top, _, names in os.walk(folder):
        found_here = [Path(n).suffix for n in names if Path(n).suffix.lower() in RASTER_SUFFIXES]
        if found_here and top != str(folder):
            deeper.append(Path(top).relative_to(folder))
            kinds.update(found_here)
    deeper.sort()
    hint = (f"; it holds archives ({listed((p.name for p in packed), 3)}): extract them first and pass the folder "
            "of their rasters" if packed else
            f"; its subfolders hold rasters ({', '.join(map(str, deeper[:3]))}{' ...' if len(deeper) > 3 else ''}): "
            f"pass '{folder}/**/*{kinds.most_common(1)[0][0]}' (quoted) to take them" if deeper else
            "; pass the folder of your scenes or the files themselves")
    raise InputRasterError(f"{folder} holds no raster ({', '.join(sorted(RASTER_SUFFIXES))}, or a georeferenced "
                           f"{'/'.join(s[1:] for s in sorted(IMAGE_SUFFIXES))}){hint}")


def warn_subfolders(folder: Path, found: list[Path]) -> None:
    """Warn of the subfolders of ``folder`` (one level) holding rasters that its scenes ``found`` do not read.

    ``scenes/extra.tif`` beside ``scenes/2024/*.tif`` reads the first only: predict's polygons
    or tile's chips would lack the others, exit 0. Hidden folders (predict's caches) and the
    tiles of a VRT mosaic among ``found`` (``gdalbuildvrt mosaic.vrt tiles/*.tif``) are not told.
    """
    from geoseg.io.stamps import vrt_sources

    below = {d: [f for f in d.iterdir() if f.is_file() and f.suffix.lower() in RASTER_SUFFIXES
                 and not f.name.startswith(".")]  # a zip's __MACOSX/._x.tif is no raster
             for d in sorted(folder.iterdir()) if d.is_dir() and not d.name.startswith(".")}
    below = {d: files for d, files in below.items() if files}
    if below:
        read = {q.resolve() for p in found for q in vrt_sources(p)}
        unread = [d.name for d, files in below.items() if any(f.resolve() not in read for f in files)]
        if unread:
            ext = Counter(f.suffix for files in below.values() for f in files).most_common(1)[0][0]
            log.warning("%s: rasters in its subfolders are not read (%s); pass '%s/**/*%s' (quoted) to take them too",
                        folder, listed(unread, 3), folder, ext)


def prj_hint(path: str | Path) -> str:
    """How to give a scene without CRS its CRS: from a ``.prj`` beside it when one holds a CRS.

    A GeoTIFF delivered with a world file (``.tfw``) often has its CRS in an ESRI ``.prj``
    beside it, which GDAL does not read for a GeoTIFF (nor QGIS, through GDAL).

    Examples:
        >>> prj_hint("/nonexistent/x.tif")
        'e.g. gdal_edit.py -a_srs EPSG:32636 /nonexistent/x.tif'
    """
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    prj = Path(path).with_suffix(".prj")
    try:
        crs = CRS.from_user_input(prj.read_text(errors="replace"))
    except (OSError, CRSError):
        return f"e.g. gdal_edit.py -a_srs EPSG:32636 {path}"
    code = crs.to_epsg()
    held = f"EPSG:{code} ({crs.name})" if code else f"'{crs.name}'"
    return f"{prj.name} beside it holds {held}, which GDAL does not read for it: gdal_edit.py -a_srs {prj} {path}"
