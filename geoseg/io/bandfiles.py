"""Scenes that are the bands of one product, one file each: Landsat's ``..._SR_B4.TIF``, Sentinel-2's ``..._B04.jp2``.

A Landsat or Sentinel-2 product unpacked on disk is a folder of one-band files. Given as
scenes, each band file was a one-band scene of its own: tile mixed red, near-infrared and
aerosol chips into one set of statistics and one model, and predict ran a model on each
band alone, exit 0. :func:`check_band_files` refuses scenes whose names differ only by a
band token and that share one grid, with the ``gdalbuildvrt -separate`` that stacks the
bands a model should see into one raster (which, beside them in their folder, stands for them).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from geoseg.errors import InputRasterError, listed
from geoseg.io.rasters import SceneInfo

#: A band file's stem: the product, an optional Landsat level prefix, ``B`` and the band, an
#: optional Sentinel-2 L2A resolution suffix.
BAND_FILE = re.compile(r"^(?:(?P<product>.+?)[_.-])?(?:SR_|ST_)?B(?P<band>\d{1,2}|8A)(?P<res>_\d+m)?$",
                       re.IGNORECASE)
#: Red, green and blue of the products whose band numbers geoseg can name (name prefix).
_RGB = {"LC08": ("4", "3", "2"), "LC09": ("4", "3", "2"), "LO08": ("4", "3", "2"), "LO09": ("4", "3", "2"),
        "LT05": ("3", "2", "1"), "LE07": ("3", "2", "1"), "LT04": ("3", "2", "1")}
_S2 = re.compile(r"^(T\d{2}[A-Z]{3}_|S2[ABC]_)", re.IGNORECASE)


def _rgb(product: str, tokens: Sequence[str]) -> tuple[str, str, str] | None:
    if _S2.match(product) or any(t.startswith("0") for t in tokens):  # Sentinel-2 pads its band numbers
        return ("4", "3", "2")
    return _RGB.get(product[:4].upper())


def check_band_files(scenes: Sequence[SceneInfo]) -> None:
    """Refuse one-band scenes that are the bands of one product (names differing by a band token, one grid).

    Raises:
        InputRasterError: naming the files, the product, and the command that stacks them.

    Examples:
        >>> BAND_FILE.match("LC09_L2SP_171060_20240101_20240102_02_T1_SR_B4")["band"]
        '4'
        >>> BAND_FILE.match("T36NXF_20240101T080000_B8A_20m").group("product", "band", "res")
        ('T36NXF_20240101T080000', '8A', '_20m')
        >>> BAND_FILE.match("B04")["band"], BAND_FILE.match("kampala_blockB_z20") is None
        ('04', True)
    """
    groups: dict[tuple[object, ...], list[tuple[str, SceneInfo]]] = {}
    for s in scenes:
        m = BAND_FILE.match(s.name)
        if m is None or s.count != 1:
            continue
        product = (m["product"] or "").lower()
        key = (product, (m["res"] or "").lower(), str(s.crs), tuple(s.transform), s.width, s.height)
        groups.setdefault(key, []).append((m["band"].upper().lstrip("0") or "0", s))
    for members in groups.values():
        bands = {b for b, _ in members}
        if len(bands) < 2:
            continue
        found = [BAND_FILE.match(s.name) for _, s in members]
        product = (found[0]["product"] if found[0] else None) or "bands"
        by_band = {b: s for b, s in members}
        rgb = _rgb(product, [m["band"] for m in found if m])
        files = [by_band[b].source for b in rgb] if rgb and all(b in by_band for b in rgb) else None
        how = (f"gdalbuildvrt -separate {product}_rgb.vrt {' '.join(files)} (red, green, blue)" if files else
               f"gdalbuildvrt -separate {product}_stack.vrt BAND_FILES... (the bands the model should see, "
               "in the order it should see them)")
        numbers = ", ".join(sorted(bands, key=lambda b: (len(b), b)))
        raise InputRasterError(
            f"{listed([s.name for _, s in members], 4)} look like the bands of one product, one file each "
            f"({'' if product == 'bands' else product + ': '}bands {numbers} on one grid), so each "
            f"would be a one-band scene of its own; stack them into one raster first: {how}, and pass it "
            "(beside the band files in their folder it stands for them)")
