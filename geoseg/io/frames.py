"""A frame of zeros around a scene's imagery that the file does not declare as nodata.

``gdalwarp`` without ``-dstnodata`` or ``-dstalpha`` fills the raster's corners beyond a
reprojected or tilted image with 0, and declares nothing: GDAL, and geoseg, read that frame
as black imagery. A country's labels over it are trained as black roofs, and
``evaluate --clip`` counts the truth there as missed. :func:`warn_zero_frames` names such
scenes before the work, with the ``gdal_edit.py -a_nodata 0`` that declares the frame.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from rasterio.errors import RasterioError
from rasterio.windows import Window

log = logging.getLogger(__name__)

#: Side in pixels of the square read at each corner.
CORNER = 4
#: Corners of 0 in every band (of 4) that make a frame: a warped strip's, or a mosaic tile's edge.
FRAMED = 2


def zero_corners(src: Any) -> int:
    """How many of an open raster's four corners are 0 in every band (:data:`CORNER` pixels a side).

    Examples:
        >>> import numpy as np
        >>> from rasterio.io import MemoryFile
        >>> data = np.full((3, 32, 32), 90, np.uint8)
        >>> data[:, :10, :10] = data[:, -10:, -10:] = 0
        >>> with MemoryFile() as mem, mem.open(driver="GTiff", width=32, height=32, count=3, dtype="uint8") as src:
        ...     src.write(data)
        ...     zero_corners(src)
        2
    """
    side_c, side_r = min(CORNER, src.width), min(CORNER, src.height)
    starts = [(c, r) for r in (0, src.height - side_r) for c in (0, src.width - side_c)]
    return sum(not src.read(window=Window(c, r, side_c, side_r)).any() for c, r in starts)


def warn_zero_frames(scenes: Sequence[Any]) -> None:
    """Warn once of the scenes with :data:`FRAMED` or more corners of 0 that declare no invalid pixel.

    ``scenes``: :class:`geoseg.io.rasters.SceneInfo` (``has_mask`` False: no nodata, mask
    or alpha), or paths and URLs (evaluate's ``--scenes``: their mask flags are read).
    """
    from rasterio.enums import MaskFlags

    from geoseg.io.sources import open_raster

    framed = []
    for s in scenes:
        source, identity = (s.source, s.identity) if hasattr(s, "source") else (str(s), "")
        if getattr(s, "has_mask", False):
            continue
        try:
            with open_raster(source, identity) as src:
                declared = any(MaskFlags.all_valid not in f for f in src.mask_flag_enums)
                if not declared and zero_corners(src) >= FRAMED:
                    framed.append(source)
        except RasterioError:  # a damaged file: the work's own read names it and the window
            continue
    if framed:
        log.warning("%d scene(s) have corners of 0 in every band and declare no nodata (%s%s): a frame around the "
                    "imagery (gdalwarp without -dstnodata)? It is read as black imagery, labels over it are trained "
                    "as black objects and evaluate --clip counts the truth there; declare it: gdal_edit.py "
                    "-a_nodata 0 %s (or warp again with -dstalpha)", len(framed), ", ".join(framed[:3]),
                    f" and {len(framed) - 3} more" if len(framed) > 3 else "", framed[0])
