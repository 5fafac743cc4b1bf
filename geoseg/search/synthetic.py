"""Generated scenes for search by example: round tanks and rectangular roofs.

Both kinds have about the same size (20-26 px across) and the same brightness over a
textured background, so only their shape tells them apart. Used by the tests and by
``bench/search.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import shapely
import torch
from affine import Affine
from rasterio.features import rasterize

from geoseg.search.boxes import match

CRS = "EPSG:32636"
#: ground pixel size of the generated scenes, metres
GSD = 0.5


@dataclass(frozen=True)
class Scene:
    """A generated scene on disk and its objects (polygons in the scene CRS, ``kind``)."""

    path: Path
    objects: gpd.GeoDataFrame


def _shape(kind: str, cx: float, cy: float, rng: np.random.Generator) -> shapely.Polygon:
    """One object in pixel coordinates."""
    if kind == "tank":
        return shapely.Point(cx, cy).buffer(rng.uniform(10.0, 13.0), quad_segs=16)
    w, h = rng.uniform(17.0, 22.0), rng.uniform(22.0, 27.0)
    box = shapely.box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
    return shapely.affinity.rotate(box, float(rng.uniform(0, 180)), origin=(cx, cy))


def draw_scene(path: str | Path, size: int = 512, n: int = 24, seed: int = 0,
               origin: tuple[float, float] = (500000.0, 100000.0), crs: str = CRS) -> Scene:
    """Write a 3-band uint8 GeoTIFF with ``n`` objects, half tanks and half roofs.

    Objects do not overlap (at least 8 px apart) and keep 16 px from the edge.

    Returns:
        The scene with its objects (``kind`` = ``tank`` or ``roof``) in the scene CRS.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    base = 90 + 15 * np.sin(xx / rng.uniform(40, 90)) * np.cos(yy / rng.uniform(40, 90))
    img = np.stack([base * f for f in (1.0, 1.05, 0.9)]) + rng.normal(0, 8, (3, size, size))
    shapes: list[shapely.Polygon] = []
    kinds: list[str] = []
    tries = 0
    while len(shapes) < n and tries < 50 * n:
        tries += 1
        kind = "tank" if len(shapes) % 2 == 0 else "roof"
        cx, cy = rng.uniform(20, size - 20, 2)
        poly = _shape(kind, float(cx), float(cy), rng)
        if any(poly.distance(s) < 8 for s in shapes):
            continue
        shapes.append(poly)
        kinds.append(kind)
    for poly in shapes:
        mask = rasterize([poly], out_shape=(size, size)).astype(bool)
        level = rng.uniform(175, 200)
        for b, f in enumerate((1.0, 0.98, 1.02)):
            img[b][mask] = level * f + rng.normal(0, 6, int(mask.sum()))
    data = np.clip(img, 0, 255).astype(np.uint8)
    transform = Affine(GSD, 0, origin[0], 0, -GSD, origin[1])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8",
                       crs=crs, transform=transform) as dst:
        dst.write(data)
    geo = [shapely.affinity.affine_transform(p, transform.to_shapely()) for p in shapes]
    objects = gpd.GeoDataFrame({"kind": kinds}, geometry=geo, crs=crs)
    return Scene(path=path, objects=objects)


def pick_examples(scene: Scene, kind: str, k: int = 3, as_boxes: bool = True) -> gpd.GeoDataFrame:
    """The first ``k`` objects of ``kind`` (their envelopes when ``as_boxes``)."""
    sel = scene.objects[scene.objects["kind"] == kind].head(k)
    geoms = sel.geometry.envelope if as_boxes else sel.geometry
    return gpd.GeoDataFrame({"kind": sel["kind"].to_numpy()}, geometry=geoms.to_numpy(), crs=sel.crs)


def _boxes(g: gpd.GeoSeries) -> torch.Tensor:
    return torch.tensor(np.asarray(g.bounds.to_numpy(), dtype=np.float32).reshape(-1, 4))


def score(found: gpd.GeoDataFrame, truth: gpd.GeoDataFrame, kind: str, iou: float = 0.5) -> dict[str, float]:
    """Recall and precision of ``kind`` at ``iou``, and the share of other kinds returned.

    Boxes are compared with the truth's envelopes, in the truth's CRS; an object of
    another kind is *returned* when a found box matches it at ``iou`` (one to one).
    ``score_kind`` / ``score_other``: the mean score of the found boxes that match an
    object of ``kind`` / of another kind (0 when none does); ``similarity_kind`` /
    ``similarity_other`` the same for their similarity, when ``found`` has one.
    """
    found = found.to_crs(truth.crs).sort_values("score", ascending=False)
    want, other = truth[truth["kind"] == kind], truth[truth["kind"] != kind]
    pred = _boxes(found.geometry)
    hit = match(pred, _boxes(want.geometry.envelope), iou)
    tp = int(hit.sum())
    other_hit = match(_boxes(other.geometry.envelope), pred, iou) if len(other) else np.zeros(0, bool)
    scores = found["score"].to_numpy(dtype=float)
    hit_other = match(pred, _boxes(other.geometry.envelope), iou)
    out = {"found": float(len(found)), "truth": float(len(want)), "recall": tp / max(len(want), 1),
            "precision": tp / max(len(found), 1),
            "other_returned": float(other_hit.mean()) if len(other) else 0.0,
            "score_kind": float(scores[hit].mean()) if hit.any() else 0.0,
            "score_other": float(scores[hit_other].mean()) if hit_other.any() else 0.0}
    if "similarity" in found:
        sims = found["similarity"].to_numpy(dtype=float)
        out["similarity_kind"] = float(sims[hit].mean()) if hit.any() else 0.0
        out["similarity_other"] = float(sims[hit_other].mean()) if hit_other.any() else 0.0
    return out
