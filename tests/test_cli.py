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
