"""Keep libtiff's and GDAL's own error lines off the terminal; geoseg reports the error.

GDAL and libtiff print some errors straight to file descriptor 2 from C (on a full disk:
``_tiffWriteProc: No space left on device.`` three times) before rasterio raises the
same error, which the CLI then prints as its one ``geoseg: error:`` line. Without ``-v``,
the CLI runs with descriptor 2 fed through a pipe that drops those lines and passes every
other byte on; Python's own ``sys.stderr`` (log lines, progress bars) writes to the
terminal directly.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import threading
from collections.abc import Iterator

#: Lines that C libraries print for an error rasterio also raises.
NOISE = re.compile(rb"^(_tiff\w*Proc|TIFF\w*): |^ERROR \d+: ")


def _pump(read_fd: int, write_fd: int) -> None:
    with open(read_fd, "rb", buffering=0, closefd=True) as src:
        pending = b""
        while chunk := src.read(65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if not NOISE.match(line) and not _write(write_fd, line + b"\n"):
                    return
        if pending and not NOISE.match(pending):
            _write(write_fd, pending)


def _write(fd: int, data: bytes) -> bool:
    try:
        os.write(fd, data)
    except OSError:  # the terminal went away
        return False
    return True


@contextlib.contextmanager
def filtered_c_stderr() -> Iterator[None]:
    """Drop :data:`NOISE` lines written to descriptor 2 while inside; a no-op without one."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a captured stream (tests): nothing to do
        yield
        return
    if fd != 2:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    pump = threading.Thread(target=_pump, args=(read_fd, saved), daemon=True, name="geoseg-stderr")
    pump.start()
    old_stderr = sys.stderr
    sys.stderr = io.TextIOWrapper(open(saved, "wb", buffering=0, closefd=False),  # noqa: SIM115
                                  encoding=old_stderr.encoding, errors="backslashreplace",
                                  write_through=True)
    try:
        yield
    finally:
        sys.stderr.flush()
        sys.stderr = old_stderr
        os.dup2(saved, 2)  # closes the pipe's last write end in this process
        pump.join(timeout=2)
        if not pump.is_alive():  # else a child process still holds the pipe: leave it
            os.close(saved)
