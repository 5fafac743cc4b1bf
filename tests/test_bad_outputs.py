"""Issue #9: outputs that cannot be written are one line naming the output, for every command.

Places that cannot be written: a path under a file, a read-only file system, a path under
/proc, a full disk. Read-only and full file systems are small tmpfs mounts when the tests
run as root (as CI does); without root, read-only is a folder without write permission
and the full-disk cases skip.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import REPO, bright_boxes_scene, grid_boxes, labels_for

from geoseg.cli.main import cli

BOXES = grid_boxes((64, 64))


def one_error_line(output: str, exit_code: int, *names: str) -> str:
    assert exit_code != 0, output
    assert "Traceback" not in output and "unexpected" not in output, output
    lines = [ln for ln in output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("geoseg: error:"), output
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


@contextlib.contextmanager
def tmpfs(where: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at ``where`` (root only); skips the test where mounting is refused."""
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(folder: Path) -> None:
    """Fill the file system of ``folder`` to the last byte."""
    with open(folder / "ballast", "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 4096)


@pytest.fixture
def bad_place(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A folder path that cannot hold outputs, of the kind the test's parameter names."""
    kind = request.param
    if kind == "under_a_file":
        (tmp_path / "a_file").write_text("x")
        yield tmp_path / "a_file" / "sub"
    elif kind == "proc":
        yield Path("/proc/geoseg-test-output")
    elif kind == "read_only":
        if os.geteuid() == 0:
            with tmpfs(tmp_path / "ro", "ro,size=1m") as mnt:
                yield mnt / "sub"
        else:
            (tmp_path / "ro").mkdir()
            (tmp_path / "ro").chmod(0o555)
            yield tmp_path / "ro" / "sub"
            (tmp_path / "ro").chmod(0o755)
    elif kind == "full":
        with tmpfs(tmp_path / "full", "size=256k") as mnt:
            fill(mnt)
            yield mnt / "sub"
    else:  # pragma: no cover
        raise ValueError(kind)


PLACES = ["under_a_file", "proc", "read_only", "full"]


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("bad_outputs")
    path = bright_boxes_scene(root / "scene.tif", (64, 64), BOXES)
    return path, labels_for(path, root / "labels.gpkg", BOXES)


def what(bad_place: Path, option: str) -> tuple[str, ...]:
    """The option an error names: on a full disk, a cache file beside the output may fail first."""
    return () if bad_place.parent.name == "full" else (option,)


def run(*args: str) -> tuple[str, int]:
    res = CliRunner().invoke(cli, [str(a) for a in args])
    return res.output, res.exit_code


@pytest.mark.parametrize("bad_place", PLACES, indirect=True)
def test_tile_out(bad_place: Path, scene: tuple[Path, Path]) -> None:
    out, code = run("tile", scene[0], "--labels", scene[1], "--out", bad_place / "p", "--size", "32", "--overlap", "0",
                    "--scheduler", "sync")
    one_error_line(out, code, str(bad_place))
    assert not (bad_place / "p" / "annotations.json").exists()


@pytest.mark.parametrize("bad_place", PLACES, indirect=True)
def test_predict_out_and_prob_out(bad_place: Path, scene: tuple[Path, Path], tiny_run: Path,
                                  tmp_path: Path) -> None:
    out, code = run("predict", scene[0], "--model", tiny_run, "--out", bad_place / "b.gpkg",
                    "--scheduler", "sync")
    one_error_line(out, code, str(bad_place), *what(bad_place, "--out"))
    assert not (bad_place / "b.gpkg").exists()
    good = tmp_path / "good" / "b.gpkg"
    out, code = run("predict", scene[0], "--model", tiny_run, "--out", good,
                    "--prob-out", bad_place / "p.tif", "--scheduler", "sync")
    one_error_line(out, code, str(bad_place), *what(bad_place, "--prob-out"))
    assert not (bad_place / "p.tif").exists()


@pytest.mark.parametrize("bad_place", PLACES, indirect=True)
def test_evaluate_json(bad_place: Path, scene: tuple[Path, Path]) -> None:
    out, code = run("evaluate", scene[1], scene[1], "--json", bad_place / "e.json")
    one_error_line(out.splitlines()[-1], code, str(bad_place), "--json")
    assert not (bad_place / "e.json").exists()


@pytest.mark.parametrize("bad_place", ["under_a_file", "proc", "read_only"], indirect=True)
def test_train_and_export_out(bad_place: Path, tiny_patches: Path, tiny_run: Path) -> None:
    out, code = run("train", REPO / "tests" / "conf" / "tiny.yaml", "--patches", tiny_patches,
                    "--out", bad_place / "run")
    one_error_line(out, code, str(bad_place), "--out")
    out, code = run("export", "--model", tiny_run, "--out", bad_place / "export")
    one_error_line(out, code, str(bad_place), "--out")


@pytest.mark.parametrize("bad_place", ["full"], indirect=True)
def test_train_on_a_full_disk(bad_place: Path, tiny_patches: Path) -> None:
    out, code = run("train", REPO / "tests" / "conf" / "tiny.yaml", "--patches", tiny_patches,
                    "--out", bad_place / "run", "--epochs", "1")
    one_error_line(out, code, str(bad_place))
    assert not (bad_place / "run" / "checkpoints" / "last.pt").exists()


@pytest.mark.parametrize("bad_place", ["full"], indirect=True)
def test_full_disk_in_a_real_terminal_is_one_line(bad_place: Path, scene: tuple[Path, Path]) -> None:
    """GDAL's and libtiff's own lines (written from C to descriptor 2) do not reach the user."""
    res = subprocess.run([sys.executable, "-m", "geoseg", "tile", str(scene[0]), "--labels", str(scene[1]),
                          "--out", str(bad_place / "p"), "--size", "32", "--overlap", "0"],
                         capture_output=True, text=True, timeout=120)
    one_error_line(res.stderr, res.returncode, str(bad_place))
    assert "_tiff" not in res.stderr


def test_vector_names_with_a_semicolon_are_refused(scene: tuple[Path, Path], tiny_run: Path,
                                                   tmp_path: Path) -> None:
    """GDAL opens and writes 'b;c.gpkg' as 'b': refused by name, in and out, before any work."""
    out = tmp_path / "b;c.gpkg"
    text, code = run("predict", scene[0], "--model", tiny_run, "--out", out, "--scheduler", "sync")
    one_error_line(text, code, str(out), "';'")
    assert list(tmp_path.iterdir()) == []
    truth = tmp_path / "t;1.gpkg"
    shutil.copy(scene[1], truth)
    text, code = run("evaluate", scene[1], truth)
    one_error_line(text, code, str(truth), "';'")
    text, code = run("tile", scene[0], "--labels", truth, "--out", tmp_path / "p")
    one_error_line(text, code, str(truth), "';'")
    assert not (tmp_path / "p").exists()


def test_an_output_never_replaces_an_input(scene: tuple[Path, Path], tiny_run: Path, tmp_path: Path) -> None:
    """--prob-out scene.tif wrote probabilities over the scene, --json pred.gpkg the report over
    the predictions, --quicklook scene.tif a PNG over the scene: each with exit 0."""
    import hashlib

    src, labels = (shutil.copy(p, tmp_path / p.name) for p in scene)
    src, labels = Path(src), Path(labels)
    digest = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (src, labels)}
    out = tmp_path / "o.gpkg"
    common = ("--model", tiny_run, "--scheduler", "sync", "--budget", "1.0")
    text, code = run("predict", src, "--out", out, "--prob-out", src, *common)
    one_error_line(text, code, f"--prob-out {src} is a scene", "would be overwritten")
    text, code = run("predict", src, "--out", out, "--prob-out", out, *common)  # a GeoTIFF's name, never --out's
    one_error_line(text, code, "invalid value for '--prob-out': should end in .tif or .tiff")
    text, code = run("predict", src, "--out", out, "--prob-out", tmp_path / "probs", *common)  # QGIS lists no such
    one_error_line(text, code, "invalid value for '--prob-out': should end in .tif or .tiff")
    assert not out.exists()
    text, code = run("predict", src, "--out", out, "--prob-out", tmp_path / "p.tif", *common)
    assert code == 0, text
    text, code = run("predict", src, "--out", tmp_path / "o2.gpkg", "--prob-out", tmp_path / "p.tif", *common)
    one_error_line(text, code, "p.tif exists", "--overwrite")  # another run's probabilities
    text, code = run("evaluate", out, labels, "--json", out)
    one_error_line(text, code, f"--json {out} is the predictions")
    text, code = run("evaluate", out, labels, "--json", labels)
    one_error_line(text, code, "is the truth")
    text, code = run("evaluate", out, labels, "--scenes", src, "--quicklook", src)
    one_error_line(text, code, "a quick-look is a PNG image")
    text, code = run("evaluate", out, labels, "--json", tmp_path / "x.png", "--quicklook", tmp_path / "x.png")
    one_error_line(text, code, "also --json's output")
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (src, labels)} == digest
