"""Options shared by several subcommands."""

from __future__ import annotations

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
