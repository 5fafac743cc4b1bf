"""Property tests: vectorizing is right on any affine, rotated and skewed ones included."""

from __future__ import annotations

import numpy as np
import shapely
from affine import Affine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage

from geoseg.predict.vectorize import instances_to_frame


@st.composite
def affines(draw: st.DrawFn) -> Affine:
    res = draw(st.floats(0.1, 30.0))
    rot = draw(st.floats(-180.0, 180.0))
    shear = draw(st.floats(-30.0, 30.0))
    flip = draw(st.sampled_from([1.0, -1.0]))
    x0, y0 = draw(st.floats(-1e6, 1e6)), draw(st.floats(-1e6, 1e6))
    return Affine.translation(x0, y0) * Affine.rotation(rot) * Affine.shear(shear, 0) * Affine.scale(res, -res * flip)


@st.composite
def label_rasters(draw: st.DrawFn) -> np.ndarray:
    h, w = draw(st.integers(4, 24)), draw(st.integers(4, 24))
    labels = np.zeros((h, w), dtype=np.int32)
    for i in range(1, draw(st.integers(1, 4)) + 1):
        r0, c0 = draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))
        r1, c1 = draw(st.integers(r0 + 1, h)), draw(st.integers(c0 + 1, w))
        labels[r0:r1, c0:c1] = i  # later boxes cover earlier ones: any shapes, holes included
    return labels


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(labels=label_rasters(), transform=affines())
def test_polygons_cover_exactly_their_pixels(labels: np.ndarray, transform: Affine) -> None:
    gdf = instances_to_frame(labels, transform, "EPSG:32636", simplify=0.0)
    present = [i for i in np.unique(labels) if i]
    assert len(gdf) == len(present)
    px_area = abs(transform.determinant)
    inv = ~transform
    for geom, i in zip(gdf.geometry, present, strict=True):
        assert geom.is_valid and geom.geom_type == "Polygon"
        # an instance in several 4-connected pieces keeps its largest (documented in _trace)
        pieces, n = ndimage.label(labels == i)
        sizes = np.bincount(pieces.ravel())[1:]
        # area conserved: every pixel of the instance, nothing else
        np.testing.assert_allclose(geom.area, sizes.max() * px_area, rtol=1e-6)

        def centres_inside(mask: np.ndarray, geom: object = geom) -> bool:
            rows, cols = np.nonzero(mask)
            xs, ys = transform * (cols + 0.5, rows + 0.5)
            return bool(shapely.contains_xy(geom, xs, ys).all())

        # every pixel centre of the instance lies inside its polygon, where the affine puts it
        assert any(centres_inside(pieces == 1 + k) for k in np.flatnonzero(sizes == sizes.max()))
        # and the polygon maps back onto the pixel grid inside the raster
        back = shapely.affinity.affine_transform(geom, inv.to_shapely())
        minx, miny, maxx, maxy = back.bounds
        assert minx > -1e-6 and miny > -1e-6 and maxx < labels.shape[1] + 1e-6 and maxy < labels.shape[0] + 1e-6
