"""The features of a large GeoParquet file near a few areas: Overture's buildings for a few scenes.

GeoParquet 1.1 files may carry a *bbox covering*: a column of each feature's bounding box
(``bbox.xmin``...; Overture's, and those written with ``to_parquet(write_covering_bbox=True)``),
whose per-row-group statistics say which row groups can hold a feature near an area. Only
those row groups are read, their rows filtered on the bboxes, and each kept feature is
indexed by its row in the file, as OGR's feature ids index a GeoPackage's
(:func:`geoseg.io.near.read_near`). A file without a covering, with native (GeoArrow)
geometries, or whose declared geometry types are not all polygons, returns None: the caller
reads it whole, as before.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import shapely
from pyproj import CRS

#: GeoParquet's geometry type names of polygons (any dimension).
_POLYGONS = re.compile(r"^(Multi)?Polygon( Z| M| ZM)?$")
_SIDES = ("xmin", "ymin", "xmax", "ymax")


def _covering(meta: dict[str, Any]) -> dict[str, list[str]] | None:
    cov = (meta.get("covering") or {}).get("bbox")
    if not isinstance(cov, dict) or not all(isinstance(cov.get(k), list) and cov[k] for k in _SIDES):
        return None
    return {k: [str(p) for p in cov[k]] for k in _SIDES}


def parquet_info(src: Path) -> dict[str, Any] | None:
    """What :func:`near_rows` needs of ``src``: its primary column, CRS, covering, columns and row groups.

    None for a file this reader leaves to the whole read: no GeoParquet metadata, a geometry
    encoding other than WKB, declared geometry types that are not all polygons (none declared,
    ``[]``, is any type: :func:`geoseg.io.near.near_features` then reads the whole file when no
    polygon is near), no bbox covering, or no CRS (``"crs": null``: the whole read says so).
    """
    try:
        pf = pq.ParquetFile(src)
        geo = json.loads((pf.schema_arrow.metadata or {}).get(b"geo", b"null"))
    except Exception:  # not Parquet, or damaged: the whole read names the file and the reason
        return None
    if not isinstance(geo, dict):
        return None
    column = geo.get("primary_column")
    meta = (geo.get("columns") or {}).get(column)
    if not isinstance(meta, dict) or str(meta.get("encoding", "")).upper() != "WKB":
        return None
    types = meta.get("geometry_types") or []
    cov = _covering(meta)
    if not all(_POLYGONS.match(str(t)) for t in types) or cov is None:  # [] is "any": Overture's, Spark's
        return None
    if "crs" in meta and meta["crs"] is None:
        return None
    crs = CRS.from_user_input(meta["crs"]) if "crs" in meta else CRS.from_user_input("OGC:CRS84")
    return {"file": pf, "column": column, "crs": crs, "covering": cov, "layer_name": src.stem,
            "fields": [n for n in pf.schema_arrow.names if n != column and n != cov["xmin"][0]]}


def _groups_near(info: dict[str, Any], boxes: list[shapely.Geometry]) -> list[int]:
    """The row groups whose bbox statistics meet one of ``boxes`` (a group without statistics: kept)."""
    md = info["file"].metadata
    paths = {md.schema.column(j).path: j for j in range(md.num_columns)}
    index = {k: paths.get(".".join(info["covering"][k])) for k in _SIDES}
    bounds = np.array([b.bounds for b in boxes])
    keep = []
    for g in range(md.num_row_groups):
        rg = md.row_group(g)
        lo_hi = []
        for k in _SIDES:
            j = index[k]
            st = rg.column(j).statistics if j is not None else None
            if st is None or not st.has_min_max:
                break
            lo_hi.append(st.min if k in ("xmin", "ymin") else st.max)
        else:  # the group's features lie within [min xmin, max xmax] x [min ymin, max ymax]
            x0, y0, x1, y1 = lo_hi
            if not ((bounds[:, 0] <= x1) & (bounds[:, 2] >= x0) & (bounds[:, 1] <= y1) & (bounds[:, 3] >= y0)).any():
                continue
        keep.append(g)
    return keep


def _field(table: pa.Table, path: list[str]) -> np.ndarray:
    col: Any = table.column(path[0])
    for name in path[1:]:
        col = pc.struct_field(col, name)
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)


def near_rows(src: Path, info: dict[str, Any], boxes: list[shapely.Geometry]) -> gpd.GeoDataFrame:
    """The features whose bbox meets one of ``boxes`` (in the file's CRS), indexed by row in the file.

    Only the row groups :func:`_groups_near` keeps are read; the covering column is dropped.
    """
    pf = info["file"]
    starts = np.concatenate([[0], np.cumsum([pf.metadata.row_group(g).num_rows
                                             for g in range(pf.metadata.num_row_groups)])])
    frames = []
    bounds = np.array([b.bounds for b in boxes])
    for g in _groups_near(info, boxes):
        table = pf.read_row_group(g)
        x0, y0, x1, y1 = (_field(table, info["covering"][k]) for k in _SIDES)
        hit = np.zeros(table.num_rows, dtype=bool)
        for bx0, by0, bx1, by1 in bounds:
            hit |= (x0 <= bx1) & (x1 >= bx0) & (y0 <= by1) & (y1 >= by0)
        rows = np.flatnonzero(hit)
        if not len(rows):
            continue
        part = table.take(pa.array(rows)).drop_columns([info["covering"]["xmin"][0]])
        df = part.drop_columns([info["column"]]).to_pandas()
        df.index = pd.Index(starts[g] + rows, dtype=np.int64)
        geoms = shapely.from_wkb(np.asarray(part.column(info["column"]).to_numpy(zero_copy_only=False), dtype=object))
        frames.append(gpd.GeoDataFrame(df, geometry=gpd.GeoSeries(geoms, index=df.index, crs=info["crs"]),
                                       crs=info["crs"]))
    if not frames:
        return gpd.GeoDataFrame(geometry=gpd.GeoSeries([], crs=info["crs"]), crs=info["crs"])
    return gpd.GeoDataFrame(pd.concat(frames), crs=info["crs"])


def every_row(info: dict[str, Any], columns: list[str]) -> pd.DataFrame:
    """``columns`` of every feature, without geometries, indexed by row in the file."""
    pf = info["file"]
    df = pf.read(columns=columns).to_pandas() if columns else pd.DataFrame(index=range(pf.metadata.num_rows))
    df.index = pd.RangeIndex(pf.metadata.num_rows)
    return df
