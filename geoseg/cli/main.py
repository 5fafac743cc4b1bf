"""The `geoseg` click group: global options, error handling, lazy subcommands."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Iterator
from typing import Any

import click

from geoseg import __version__

# albumentations asks the network for updates at import; there is no network here.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

#: Subcommand name -> "module:function". Imported only when the command runs, so that
#: `geoseg --help` and `geoseg tile` never pay for importing torch.
COMMANDS: dict[str, str] = {
    "tile": "geoseg.cli.tile:tile_cmd",
    "evaluate": "geoseg.cli.evaluate:evaluate_cmd",
    "train": "geoseg.cli.train:train_cmd",
    "calibrate": "geoseg.cli.calibrate:calibrate_cmd",
    "export": "geoseg.cli.export:export_cmd",
    "predict": "geoseg.cli.predict:predict_cmd",
    "search": "geoseg.cli.search:search_cmd",
    "run": "geoseg.cli.run:run_cmd",
}


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"time": self.formatTime(record), "level": record.levelname,
                           "logger": record.name, "message": record.getMessage()})


class _JsonLines(io.TextIOBase):
    """A stderr whose every line leaves as one JSON object (``--log-format json``).

    Summary lines, the final ``geoseg: error:`` line and anything else written to
    ``sys.stderr`` become ``{"time", "level", "logger", "message"}`` objects like the log
    records; it is not a TTY, so progress bars stay off.
    """

    def __init__(self, stream: Any, logger: str) -> None:
        super().__init__()
        self._stream, self._logger, self._pending = stream, logger, ""

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, s: str) -> int:
        *lines, self._pending = (self._pending + s).split("\n")
        for line in lines:
            if line.strip():
                level = "ERROR" if line.startswith("geoseg: error:") else "INFO"
                record = logging.LogRecord(self._logger, logging.INFO, "", 0, line, None, None)
                self._stream.write(json.dumps({"time": _JsonFormatter().formatTime(record),
                                               "level": level, "logger": self._logger,
                                               "message": line}) + "\n")
        self._stream.flush()
        return len(s)

    def flush(self) -> None:
        self._stream.flush()


@contextlib.contextmanager
def json_stderr(command: str) -> Iterator[None]:
    """Route ``sys.stderr`` through :class:`_JsonLines` while inside."""
    old = sys.stderr
    sys.stderr = _JsonLines(old, f"geoseg.{command}")
    try:
        yield
    finally:
        sys.stderr.flush()
        sys.stderr = old


def setup_logging(verbosity: int, fmt: str) -> None:
    """Configure the root logger: -v INFO, -vv DEBUG, -q ERROR; text or JSON lines."""
    level = max(logging.DEBUG, logging.WARNING - 10 * verbosity)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json"
                         else logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # an HTTP client's retries are its business: the error line names the URL when they fail
    logging.getLogger("urllib3").setLevel(max(level, logging.ERROR) if verbosity < 2 else level)
    logging.captureWarnings(True)
    # rasterio warns at every mask read of a raster with both a nodata value and an alpha band that the
    # nodata value decides; its dataset mask, which geoseg reads, is the alpha band's (tests/
    # test_bad_inputs_predict.py -k nodata_value): a warning per block about nothing to fix (NodataShadowWarning)
    warnings.filterwarnings("ignore", message="The dataset's nodata attribute is shadowing the alpha band")
    if not getattr(warnings.showwarning, "geoseg", False):
        warnings.showwarning = _show_warning(warnings.showwarning)


def _show_warning(captured: Any) -> Any:
    """Our warnings as one log line each ('WARNING geoseg: ...'), without our source file and line.

    Other packages' warnings keep the logging module's form (``py.warnings``, file and line).
    """
    from geoseg.errors import GeoSegWarning

    def show(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None,
             line: str | None = None) -> None:
        if file is None and issubclass(category, GeoSegWarning):
            logging.getLogger("geoseg").warning("%s", message)
        else:
            captured(message, category, filename, lineno, file, line)

    show.geoseg = True  # type: ignore[attr-defined]
    return show


def _unexpected(err: BaseException) -> str:
    return f"unexpected {type(err).__name__}: {err}; rerun with -v for details and report it"


def _os_error_line(err: OSError) -> str | None:
    """One line for an OSError that names its file and whose errno says what to do."""
    import errno

    advice = {errno.ENOSPC: "free some space or choose another folder",
              errno.EDQUOT: "free some space or choose another folder",
              errno.EFBIG: "choose another folder",
              errno.EROFS: "choose a folder you can write to",
              errno.EACCES: "check its permissions or choose another folder",
              errno.EPERM: "check its permissions or choose another folder",
              errno.ENOENT: "check the path"}.get(err.errno or -1)
    if not err.filename or advice is None:
        return None
    return f"{err.filename}: {err.strerror}; {advice}"


def _trace_failed(message: str) -> None:
    """Mark the command's span (still open: it ends when the context closes) as failed."""
    from geoseg import tracing

    tracing.failed(message)


class GeoSegGroup(click.Group):
    """A group whose commands are imported lazily and whose errors are one line."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attr = target.split(":")
        cmd: click.Command = getattr(importlib.import_module(module), attr)
        return cmd

    def invoke(self, ctx: click.Context) -> Any:
        from geoseg.cli.cstderr import filtered_c_stderr

        if ctx.params.get("verbose", 0) > 0:
            return self._invoke(ctx)
        with filtered_c_stderr():
            return self._invoke(ctx)

    def _invoke(self, ctx: click.Context) -> Any:
        from geoseg.errors import GeoSegError

        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except GeoSegError as err:
            self._fail(ctx, str(err))
        except OSError as err:  # not a GeoSegError: e.g. a cache write deep inside a library
            self._fail(ctx, _os_error_line(err) or _unexpected(err))
        except KeyboardInterrupt:
            _trace_failed("interrupted")
            click.echo("geoseg: interrupted; rerun the same command to resume", err=True)
            ctx.exit(130)
        except Exception as err:  # an unexpected bug: still one line unless --verbose
            self._fail(ctx, _unexpected(err))

    @staticmethod
    def _fail(ctx: click.Context, message: str) -> None:
        _trace_failed(message)
        if (ctx.obj or {}).get("verbosity", 0) > 0:
            traceback.print_exc()
        click.echo(f"geoseg: error: {message}", err=True)
        ctx.exit(1)


@click.group(cls=GeoSegGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="geoseg")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug); shows tracebacks.")
@click.option("-q", "--quiet", count=True, help="Less log output.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="Log lines as text or as JSON objects.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), metavar="PORT",
              help="Serve Prometheus metrics on this port while the command runs (0: any free "
                   "port; default: $GEOSEG_METRICS_PORT, else off). See docs/dask.md.")
@click.option("--trace", type=click.Choice(["console", "otlp", "off"]), default=None,
              help="OpenTelemetry spans of the command, its scenes and Dask tasks: JSON lines on stderr "
                   "or OTLP to $OTEL_EXPORTER_OTLP_ENDPOINT (default: $GEOSEG_TRACE, else otlp when that "
                   "endpoint is set, else off; needs geoseg[otel]). See docs/dask.md.")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: int, log_format: str, metrics_port: int | None,
        trace: str | None) -> None:
    """Satellite and aerial GeoTIFFs to georeferenced polygons of the objects in them.

    \b
    $ geoseg tile data/sample --labels data/sample/labels/buildings.gpkg --out patches/
    $ geoseg --metrics-port 9100 predict scenes/ --model runs/b1 --out buildings.gpkg
    $ geoseg --trace console tile data/sample --out patches/
    """
    ctx.obj = {"verbosity": verbose - quiet}
    setup_logging(verbose - quiet, log_format)
    from geoseg import tracing
    from geoseg.metrics import port_from, serving

    command = ctx.invoked_subcommand or "geoseg"
    if log_format == "json":  # summary and error lines too: one JSON object per line
        ctx.with_resource(json_stderr(command))
    port = ctx.with_resource(serving(port_from(metrics_port), command))
    if port is not None:
        click.echo(f"metrics of {command}: http://localhost:{port}/metrics", err=True)
    ctx.with_resource(tracing.command(tracing.mode_from(trace), command))


def main() -> None:
    """Entry point for ``python -m geoseg``."""
    cli(prog_name="geoseg")
