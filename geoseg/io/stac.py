"""STAC Items, ItemCollections and API searches as scenes.

A STAC document (a local ``.json`` file or a URL) holding an Item, an ItemCollection
(``FeatureCollection``) or a JSON list of Items gives one scene per item: the item's
``asset`` (``--asset``; default :data:`DEFAULT_ASSETS`, then the only GeoTIFF or ``data``
asset), read from its href (relative hrefs resolved against the document), named by the
item id. :func:`search_scenes` runs a STAC API search (``--stac-search URL --bbox
--datetime``) with pystac-client, an optional dependency (``pip install geoseg[stac]``).
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from geoseg.errors import ConfigError, DependencyError, InputRasterError, first_line
from geoseg.io.encoding import Scaling
from geoseg.io.sources import REMOTE_HINT, SceneSource, check_unique_names, http_url, is_remote

#: Assets taken when ``--asset`` is not given, in this order.
DEFAULT_ASSETS = ("visual", "data", "image")
_GEOTIFF = ("image/tiff", "image/vnd.stac.geotiff")


def looks_like_stac(source: str) -> bool:
    """Whether a SCENES input is a STAC document: a ``.json`` file or URL.

    Examples:
        >>> looks_like_stac("https://h.org/items/a.json"), looks_like_stac("https://h.org/a.tif")
        (True, False)
    """
    url = http_url(source)
    path = urllib.parse.urlsplit(url).path if url else source
    return path.lower().endswith(".json")


def _read_json(source: str) -> Any:
    """A JSON document from a local file or an http(s) URL (one-line errors naming it)."""
    try:
        url = http_url(source)
        if url is not None:
            with urllib.request.urlopen(url, timeout=30) as resp:  # noqa: S310 (http/https only)
                return json.loads(resp.read())
        if is_remote(source):
            raise InputRasterError(f"cannot read STAC document {source}: only local files and http(s) "
                                   "URLs are read; download it first")
        return json.loads(Path(source).read_text(encoding="utf-8"))
    except urllib.error.HTTPError as err:
        raise InputRasterError(f"cannot read STAC document {source}: HTTP {err.code} {err.reason}; "
                               f"{REMOTE_HINT}") from None
    except urllib.error.URLError as err:
        raise InputRasterError(f"cannot reach STAC document {source}: {err.reason}; {REMOTE_HINT}") from None
    except FileNotFoundError:
        raise InputRasterError(f"{source} does not exist; check the path") from None
    except (OSError, ValueError) as err:
        raise InputRasterError(f"cannot read STAC document {source}: {first_line(err)}; "
                               "pass a STAC Item or ItemCollection JSON") from None


def _items(doc: Any, source: str) -> list[Any]:
    """The pystac Items of a document: an Item, an ItemCollection, or a list of Items."""
    import pystac

    feats = doc if isinstance(doc, list) else (
        doc.get("features") if isinstance(doc, dict) and doc.get("type") == "FeatureCollection"
        else [doc])
    items = []
    for f in feats or []:
        if not (isinstance(f, dict) and f.get("type") == "Feature" and "assets" in f):
            raise InputRasterError(f"{source} is not a STAC Item, ItemCollection or list of Items "
                                   "(a Feature with 'assets'); pass one, or the raster files themselves")
        try:
            items.append(pystac.Item.from_dict(f, preserve_dict=True))
        except (KeyError, ValueError, TypeError, pystac.STACError) as err:
            raise InputRasterError(f"{source}: item {f.get('id')!r} is not valid STAC ({err}); "
                                   "fix the document") from None
    if not items:
        raise InputRasterError(f"{source} holds no STAC item; pass a document with items")
    return items


def choose_asset(item: Any, asset: str | None, where: str) -> str:
    """The key of the asset to read: ``asset``, else a default one.

    Raises:
        ConfigError: ``asset`` is not in the item, or no default fits (the keys are named).
    """
    keys = list(item.assets)
    if asset is not None:
        if asset not in item.assets:
            raise ConfigError(f"--asset {asset}: item {item.id} of {where} has no such asset; "
                              f"choose one of {', '.join(keys)}")
        return asset
    for k in DEFAULT_ASSETS:
        if k in item.assets:
            return k
    rasters = [k for k, a in item.assets.items()
               if (a.media_type or "").startswith(_GEOTIFF) or "data" in (a.roles or [])]
    if len(rasters) == 1:
        return str(rasters[0])
    raise ConfigError(f"item {item.id} of {where} has no 'visual' or 'data' asset; choose one of "
                      f"{', '.join(keys)} with --asset")


def _absolute(href: str, base: str) -> str:
    """An asset href made absolute against the document it came from."""
    if is_remote(href) or Path(href).is_absolute():
        return href
    url = http_url(base)
    if url is not None:
        return urllib.parse.urljoin(url, href)
    return str((Path(base).resolve().parent / href).resolve())


def asset_scaling(fields: dict[str, Any]) -> Scaling | None:
    """The per-band (scale, offset) a STAC asset declares; None when it declares none.

    The raster extension's ``raster:bands`` (v1: ``scale``, ``offset`` per band) or STAC 1.1's
    ``bands`` (``raster:scale``, ``raster:offset``), else both fields on the asset itself (one
    pair for every band). Sentinel-2 L2A items declare offset -0.1 from processing baseline
    04.00 on, which their COGs do not.

    Examples:
        >>> asset_scaling({"raster:bands": [{"scale": 0.0001, "offset": -0.1}]})
        ((0.0001, -0.1),)
        >>> asset_scaling({"raster:bands": [{"nodata": 0}]}) is None
        True
    """
    bands = fields.get("raster:bands") or fields.get("bands")
    if not isinstance(bands, list) or not all(isinstance(b, dict) for b in bands):
        bands = [fields]
    pairs = [(b.get("scale", b.get("raster:scale")), b.get("offset", b.get("raster:offset"))) for b in bands]
    if all(sc is None and off is None for sc, off in pairs):
        return None
    return tuple((1.0 if sc is None else float(sc), 0.0 if off is None else float(off)) for sc, off in pairs)


def item_scenes(items: Sequence[Any], asset: str | None, where: str) -> list[SceneSource]:
    """The chosen asset of each item as a scene named by the item id."""
    out = []
    for item in items:
        key = choose_asset(item, asset, where)
        base = item.get_self_href() or where
        chosen = item.assets[key]
        out.append(SceneSource(_absolute(chosen.href, base), item.id, asset_scaling(chosen.extra_fields)))
    check_unique_names(out)
    return out


def stac_scenes(source: str, asset: str | None = None) -> list[SceneSource]:
    """The scenes of a STAC Item / ItemCollection / list of Items (file or URL).

    Raises:
        InputRasterError: unreadable document, or not STAC.
        ConfigError: an item lacks the asset.
    """
    return item_scenes(_items(_read_json(source), source), asset, source)


def search_scenes(url: str, *, bbox: Sequence[float] | None = None, datetime: str | None = None,
                  collections: Sequence[str] = (), max_items: int | None = None, asset: str | None = None,
                  query: dict[str, Any] | None = None) -> list[SceneSource]:
    """The scenes a STAC API search finds (pystac-client), the chosen asset of each item.

    Raises:
        DependencyError: pystac-client is not installed.
        InputRasterError: the API cannot be reached or refuses the search; nothing found.
        ConfigError: an item lacks the asset.
    """
    import pystac

    try:
        from pystac_client import Client
        from pystac_client.exceptions import APIError
    except ImportError:
        raise DependencyError("--stac-search needs pystac-client: pip install 'geoseg[stac]'") from None
    try:
        client = Client.open(url)
        found = list(client.search(bbox=list(bbox) if bbox else None, datetime=datetime,
                                   collections=list(collections) or None, max_items=max_items,
                                   query=query).items())
    except (APIError, pystac.STACError, OSError, ValueError, NotImplementedError) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        if errno := re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", msg):  # requests' nesting: the socket's reason
            msg = f"cannot connect ({errno.group(1).strip()})"
        raise InputRasterError(f"STAC search at {url} failed: {msg[:200]}; check the API URL, "
                               "--bbox (west,south,east,north in degrees) and --datetime") from None
    if not found:
        raise InputRasterError(f"STAC search at {url} found no item (bbox {bbox}, datetime {datetime}, "
                               f"collections {list(collections) or 'any'}); widen the search")
    return item_scenes(found, asset, url)
