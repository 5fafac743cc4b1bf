from click.testing import CliRunner

from geoseg import __version__
from geoseg.cli.main import COMMANDS, cli


def test_version():
    res = CliRunner().invoke(cli, ["--version"])
    assert res.exit_code == 0
    assert __version__ in res.output


def test_every_command_help_has_an_example():
    runner = CliRunner()
    for name in COMMANDS:
        res = runner.invoke(cli, [name, "--help"])
        assert res.exit_code == 0, res.output
        assert "$ geoseg " + name in res.output


def test_usage_error_exits_2():
    res = CliRunner().invoke(cli, ["tile"])
    assert res.exit_code == 2


def test_json_log_format_carries_summary_and_error_lines(tmp_path) -> None:
    """Issue #15: with --log-format json every stderr line is one JSON object."""
    import json as jsonlib

    from conftest import bright_boxes_scene, grid_boxes, labels_for

    boxes = grid_boxes((64, 64))
    scene = bright_boxes_scene(tmp_path / "s.tif", (64, 64), boxes)
    labels = labels_for(scene, tmp_path / "l.gpkg", boxes)
    res = CliRunner().invoke(cli, ["--log-format", "json", "tile", str(scene), "--labels", str(labels),
                                   "--out", str(tmp_path / "p"), "--size", "32", "--overlap", "0"])
    assert res.exit_code == 0, res.output
    objs = [jsonlib.loads(line) for line in res.output.splitlines() if line.strip()]
    assert any(o["message"].startswith("chips: 4 written") for o in objs)
    assert {o["logger"] for o in objs} == {"geoseg.tile"} and {"time", "level"} <= set(objs[0])
    res = CliRunner().invoke(cli, ["--log-format", "json", "tile", str(scene), "--out", str(tmp_path / "q"),
                                   "--size", "32", "--overlap", "32"])
    assert res.exit_code == 1
    (err,) = [jsonlib.loads(line) for line in res.output.splitlines() if line.strip()]
    assert err["level"] == "ERROR" and err["message"].startswith("geoseg: error: overlap (32)")


def test_our_warnings_are_one_line_without_our_source(tmp_path) -> None:
    """A GeoSegWarning printed 'WARNING py.warnings: <install path>/geoseg/tile/stage.py:309:
    EmptyLabelsWarning: ...' and then the source line that raised it."""
    import warnings

    import geopandas as gpd
    import numpy as np
    from conftest import write_raster
    from rasterio.transform import from_origin

    scene = write_raster(tmp_path / "s.tif", np.full((3, 64, 64), 60, np.uint8), "EPSG:32636",
                         from_origin(450000, 40000, 1, 1))
    empty = tmp_path / "none.gpkg"
    gpd.GeoDataFrame({"class": []}, geometry=gpd.GeoSeries([], crs="EPSG:32636")).to_file(empty)
    with warnings.catch_warnings():
        warnings.simplefilter("default")  # shown, as for a user (pytest's config makes them errors)
        res = CliRunner().invoke(cli, ["tile", str(scene), "--labels", str(empty), "--out", str(tmp_path / "p"),
                                       "--size", "32", "--overlap", "0"])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if "holds no polygon labels" in ln]
    assert lines == [f"WARNING geoseg: {empty} holds no polygon labels: only negative chips will be written"], \
        res.output
    assert "py.warnings" not in res.output and ".py:" not in res.output


def test_a_bad_option_value_names_the_option_typed(tmp_path) -> None:
    """Errors named the config field ('min_area', 'max_results') 'in options', not the option the user typed."""
    from conftest import bright_boxes_scene

    scene, model = bright_boxes_scene(tmp_path / "s.tif", (32, 32), [(4, 4, 12, 12)]), tmp_path / "run"
    for args, said in ((["predict", str(scene), "--model", str(model), "--out", str(tmp_path / "o.gpkg"),
                         "--min-area", "-1"], "invalid value for '--min-area': Input should be greater than or "
                                              "equal to 0 on the command line; fix the value"),
                       (["predict", str(scene), "--model", str(model), "--out", str(tmp_path / "o.gpkg"),
                         "--simplify", "inf"], "invalid value for '--simplify': Input should be a finite number"),
                       (["search", str(scene), "--examples", str(tmp_path / "e.gpkg"), "--model", str(model),
                         "--out", str(tmp_path / "f.gpkg"), "--max-results", "0"],
                        "invalid value for '--max-results'")):
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 1 and said in res.output and res.output.count("\n") == 1, res.output
