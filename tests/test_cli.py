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
                                   "--size", "32"])
    assert res.exit_code == 1
    (err,) = [jsonlib.loads(line) for line in res.output.splitlines() if line.strip()]
    assert err["level"] == "ERROR" and err["message"].startswith("geoseg: error: overlap (64)")
