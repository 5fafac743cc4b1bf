"""The class of each feature of labels or truth: a column's values, checked."""

from __future__ import annotations

import logging

import geopandas as gpd
import numpy as np

from geoseg.errors import InputVectorError

log = logging.getLogger(__name__)

#: More classes than this, each of about one feature (over half as many classes as features), are an identifier.
MAX_ID_LIKE = 50


def class_values(gdf: gpd.GeoDataFrame, field: str, what: str) -> np.ndarray:
    """The class of each feature as a string; features without one are an error.

    pandas keeps missing values through ``astype(str)``: a null class would become a class
    of its own (or break sorting the classes), so the file is refused instead.

    Args:
        gdf: the features.
        field: the class column (present in ``gdf``).
        what: the input, for the message (``"label file x.gpkg"``).

    Raises:
        InputVectorError: a feature has no value in ``field``; ``field`` is an identifier (:data:`MAX_ID_LIKE`).

    Examples:
        >>> class_values(gpd.GeoDataFrame({"k": ["a", 2]}, geometry=[None, None]), "k", "labels").tolist()
        ['a', '2']
    """
    col = gdf[field]
    text = col.astype(str)
    missing = np.flatnonzero((col.isna() | (text.str.strip() == "")).to_numpy())  # '' or '  ': no class either
    if len(missing):
        rows = ", ".join(str(int(r) + 1) for r in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise InputVectorError(
            f"{what}: {len(missing)} of {len(gdf)} features have no value in '{field}' (the class field; "
            f"features {rows}); give them a class or remove them (QGIS: Field Calculator), or pass another "
            "--class-field (none: one class for every feature)")
    if (kinds := text.nunique()) > MAX_ID_LIKE and kinds > len(text) / 2:  # 'osm_id', 'fid': a class per feature
        raise InputVectorError(f"{what}: '{field}' gives {kinds} classes to {len(text)} features (an identifier?); a "
                               "class is a kind of object (building, tree): pass the column that holds each feature's "
                               "kind as --class-field, or none (one class for every feature)")
    spellings: dict[str, list[str]] = {}
    for name in text.unique():
        spellings.setdefault(str(name).strip().casefold(), []).append(str(name))
    clash = [names for names in spellings.values() if len(names) > 1]
    if clash:  # 'Building' beside 'building ': two classes that split one kind of object
        log.warning("%s: classes %s differ only in case or spaces: each is a class of its own; give each "
                    "kind one spelling (QGIS Field Calculator: lower(trim(\"%s\")))", what,
                    " and ".join("/".join(repr(n) for n in names) for names in clash[:3]), field)
    return np.asarray(text.to_numpy(), dtype=object)
