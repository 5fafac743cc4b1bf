"""A frame of zeros that a scene does not declare (gdalwarp without -dstnodata): named before the work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from click.testing import CliRunner
from conftest import labels_for, write_raster
from rasterio.transform import from_origin

from geoseg.cli.main import cli

CRS = "EPSG:32636"


def _tilted(path: Path, nodata: float | None = None, mask: bool = False) -> Path:
    """Imagery of a tilted strip, its corners 0: what gdalwarp writes north-up without -dstnodata."""
    rows, cols = np.mgrid[:96, :96]
    inside = (np.abs((rows - 48) + (cols - 48)) < 60) & (np.abs((rows - 48) - (cols - 48)) < 60)
    rng = np.random.default_rng(0)
    data = np.where(inside, rng.integers(30, 200, (3, 96, 96)), 0).astype(np.uint8)
    return write_raster(path, data, CRS, from_origin(450000, 40000, 1, 1), nodata=nodata,
                        mask=(inside * 255).astype(np.uint8) if mask else None)


def test_an_undeclared_frame_of_zeros_is_named_and_a_declared_one_is_not(tmp_path: Path) -> None:
    framed = _tilted(tmp_path / "framed.tif")
    labels = labels_for(framed, tmp_path / "l.gpkg", [(2, 2, 10, 10), (40, 40, 56, 56)], crs=CRS)  # one in the frame
    res = CliRunner().invoke(cli, ["tile", str(framed), "--labels", str(labels), "--out", str(tmp_path / "p"),
                                   "--size", "48", "--overlap", "0"])
    assert res.exit_code == 0, res.output
    assert "1 scene(s) have corners of 0 in every band and declare no nodata" in res.output
    assert f"gdal_edit.py -a_nodata 0 {framed}" in res.output
    for name, kw in (("nodata", {"nodata": 0}), ("masked", {"mask": True})):
        scene = _tilted(tmp_path / f"{name}.tif", **kw)
        res = CliRunner().invoke(cli, ["tile", str(scene), "--labels", str(labels), "--out", str(tmp_path / name),
                                       "--size", "48", "--overlap", "0"])
        assert res.exit_code == 0 and "corners of 0" not in res.output, res.output
    # evaluate --clip: the footprint holds the frame, where the truth counts as missed
    res = CliRunner().invoke(cli, ["evaluate", str(labels), str(labels), "--scenes", str(framed), "--clip"])
    assert res.exit_code == 0 and "1 scene(s) have corners of 0" in res.output, res.output
    res = CliRunner().invoke(cli, ["evaluate", str(labels), str(labels), "--scenes", str(tmp_path / "nodata.tif"),
                                   "--clip"])
    assert res.exit_code == 0 and "corners of 0" not in res.output, res.output
    plain = write_raster(tmp_path / "plain.tif", np.full((3, 96, 96), 80, np.uint8), CRS,
                         from_origin(450000, 40000, 1, 1))
    plain_dark_corner = tmp_path / "corner.tif"
    data = np.full((3, 96, 96), 80, np.uint8)
    data[:, :8, :8] = 0  # one dark corner: a shadow, not a frame
    write_raster(plain_dark_corner, data, CRS, from_origin(450000, 40000, 1, 1))
    res = CliRunner().invoke(cli, ["tile", str(plain), str(plain_dark_corner), "--out", str(tmp_path / "u"),
                                   "--size", "48", "--overlap", "0"])
    assert res.exit_code == 0 and "corners of 0" not in res.output, res.output
