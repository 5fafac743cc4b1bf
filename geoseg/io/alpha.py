"""Alpha bands of a scene: the mask, or data that GDAL marked alpha (a 4-band byte GeoTIFF is RGBA)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from rasterio.enums import ColorInterp
from rasterio.windows import Window

from geoseg.errors import GeoSegWarning, InputRasterError


def alpha_bands(src: Any, path: str) -> list[int]:
    """The alpha bands of an open raster (1-based): the mask, not data (RGBA drone and web-map exports).

    GDAL's ``dataset_mask`` reads them. A band marked alpha whose values are not only 0 and
    the opaque value (255, or the dtype's maximum) in a sample of 9 windows is data written
    as RGBA (a 4-band byte GeoTIFF is RGBA by default: a near-infrared band becomes
    "alpha"): it stays a data band, with a warning.

    Raises:
        InputRasterError: an alpha band before a data band.
    """
    marked = [i for i, ci in enumerate(src.colorinterp, 1) if ci == ColorInterp.alpha]
    if not marked:
        return []
    opaque = [0, 255, np.iinfo(src.dtypes[0]).max if np.issubdtype(np.dtype(src.dtypes[0]), np.integer) else 1]
    side = min(128, src.width, src.height)
    wins = [Window(int(c), int(r), side, side) for r in np.linspace(0, src.height - side, 3)
            for c in np.linspace(0, src.width - side, 3)]
    alpha = []
    for b in marked:
        values = np.concatenate([src.read(b, window=w).ravel() for w in wins])
        if np.isin(values, opaque).mean() >= 0.99:
            alpha.append(b)
        else:
            warnings.warn(f"{path}: band {b} is marked alpha but holds other values than 0 and {max(opaque[1:])} "
                          "(data written as RGBA?): read as a data band; if it is a mask, set its values "
                          "to 0 and 255, else its colour interpretation (gdal_edit.py -colorinterp_"
                          f"{b} undefined)", GeoSegWarning, stacklevel=3)
    data = src.count - len(alpha)
    if alpha and (data < 1 or alpha != list(range(data + 1, src.count + 1))):
        raise InputRasterError(f"{path}: alpha band {alpha[0]} of {src.count} is not after the data bands; "
                               "move it last (gdal_translate -b ...) or drop it")
    return alpha
