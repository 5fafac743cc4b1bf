"""Options shared by several subcommands."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

F = Callable[..., Any]


def scheduler_option(f: F) -> F:
    """``--scheduler``: a Dask local scheduler or a distributed scheduler address."""
    return click.option(
        "--scheduler", default="threads", show_default=True, metavar="threads|processes|sync|tcp://HOST:PORT",
        help="Dask scheduler: a local one, or the address of a running dask.distributed "
             "scheduler (its workers must see the same paths).",
    )(f)


def overwrite_option(f: F) -> F:
    """``--overwrite``: replace earlier outputs."""
    return click.option("--overwrite", is_flag=True,
                        help="Replace outputs of an earlier run made with other parameters.")(f)


def progress_option(f: F) -> F:
    """``--progress/--no-progress``."""
    return click.option("--progress/--no-progress", default=None,
                        help="Show a progress bar (default: on a terminal).")(f)


def parse_bands(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    """Click callback of ``--bands``: ``"1,1,1"`` -> ``(1, 1, 1)``."""
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"'{value}' is not a comma-separated list of band numbers, "
                                 "e.g. 1,2,3 or 1,1,1") from None


def _bbox(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[float, ...] | None:
    """Click callback of ``--bbox``: ``"32.5,0.3,32.6,0.4"`` -> four floats.

    West > east is a box across the antimeridian, as the STAC API specification reads it
    (``179.8,-17,-179.8,-16.6``: Fiji's Taveuni); one that would span over half the globe
    that way is taken for swapped longitudes and refused.
    """
    if value is None:
        return None
    try:
        box = tuple(float(v) for v in value.split(","))
    except ValueError:
        box = ()
    if len(box) != 4 or box[1] > box[3] or not all(-180 <= v <= 180 for v in box[::2]) \
            or not all(-90 <= v <= 90 for v in box[1::2]):
        raise click.BadParameter(f"'{value}' is not west,south,east,north in degrees, e.g. 32.55,0.30,32.62,0.36")
    if box[0] > box[2] and box[2] + 360 - box[0] > 180:  # west > east crosses 180°; over half the globe: swapped
        raise click.BadParameter(f"'{value}' has west > east: it spans {box[2] + 360 - box[0]:.0f}° of longitude "
                                 f"across the antimeridian; give {box[2]},{box[1]},{box[0]},{box[3]}, or a box "
                                 "across 180° such as 179.8,-17,-179.8,-16.6 (Taveuni) as it is")
    return box


def scenes_argument(f: F) -> F:
    """SCENES (files, folders, URLs, STAC documents) and the STAC options of a command.

    The command gets ``scenes`` resolved: a list of :class:`geoseg.io.sources.SceneSource`,
    from the arguments (``--asset`` picks the asset of STAC items) and from a STAC API
    search (``--stac-search URL`` with ``--bbox``, ``--datetime``, ``--collection``,
    ``--max-items``). Arguments are strings, so that ``https://`` keeps its two slashes.
    """

    @functools.wraps(f)
    def run(*args: Any, scenes: tuple[str, ...], asset: str | None, stac_search: str | None,
            bbox: tuple[float, ...] | None, datetime: str | None, collections: tuple[str, ...],
            max_items: int | None, **kwargs: Any) -> Any:
        from geoseg.io.sources import list_scenes

        if not scenes and stac_search is None:
            raise click.UsageError("give SCENES (files, folders, URLs or STAC JSON) or --stac-search URL")
        if stac_search is None and (bbox or datetime or collections or max_items):
            raise click.UsageError("--bbox, --datetime, --collection and --max-items need --stac-search URL")
        found = list(list_scenes(scenes, asset=asset)) if scenes else []
        if stac_search is not None:
            from geoseg.io.stac import search_scenes

            found += search_scenes(stac_search, bbox=bbox, datetime=datetime, collections=collections,
                                   max_items=max_items, asset=asset)
            found = list_scenes(found)  # names unique across both
        return f(*args, scenes=found, **kwargs)

    options = [
        click.argument("scenes", nargs=-1, metavar="SCENES..."),
        click.option("--asset", help="Asset of STAC items to read.  [default: visual, else data]"),
        click.option("--stac-search", metavar="URL", help="Also take the items a STAC API search finds "
                     "(needs pystac-client: pip install 'geoseg[stac]')."),
        click.option("--bbox", callback=_bbox, metavar="W,S,E,N", help="--stac-search: area, in degrees."),
        click.option("--datetime", help="--stac-search: a date or range, e.g. 2024-01-01/2024-06-30."),
        click.option("--collection", "collections", multiple=True, help="--stac-search: collection (repeatable)."),
        click.option("--max-items", type=click.IntRange(1), help="--stac-search: take at most this many items."),
    ]
    for option in reversed(options):
        run = option(run)
    return run
