# The command-line dispatcher (meta1lite.cli, CPython) and the MicroPython entry
# point (meta1lite.__main__ under the real micropython binary). CPython-only.
import os

from helpers.upy import ROOT, run_micropython

from meta1lite import __main__ as entry
from meta1lite import cli


def test_split_config_finds_every_spelling():
    assert cli.split_config(["-c", "a", "x"]) == ("a", ["x"])
    assert cli.split_config(["x", "-cb", "y"]) == ("b", ["x", "y"])
    assert cli.split_config(["--config=c", "x"]) == ("c", ["x"])
    assert cli.split_config(["x", "--", "-c", "d"]) == (None, ["x", "--", "-c", "d"])
    assert cli.split_config(["-C", "e", "r@x"], ("-c", "-C")) == ("e", ["r@x"])


def test_commands_get_config_or_path_and_the_rest_of_argv(monkeypatch):
    seen = []
    monkeypatch.setitem(cli.COMMANDS, "probe", (lambda cfg, argv: seen.append((cfg, argv)) or 7,
                                               "config", "test"))
    good = os.path.join(ROOT, "conf/examples/picow.conf")
    assert cli.main(["probe", "-c", good, "--json", "x"]) == 7
    cfg, argv = seen[0]
    assert cfg["spool"] == "/spool" and cfg["config_file"] == good and argv == ["--json", "x"]


def test_environment_variable_and_default(monkeypatch):
    seen = []
    monkeypatch.setitem(cli.COMMANDS, "probe", (lambda path, argv: seen.append(path), "path", "t"))
    monkeypatch.setenv("META1LITE_CONF", "/from/env")
    cli.main(["probe"])
    cli.main(["-c", "/flag", "probe"])
    monkeypatch.delenv("META1LITE_CONF")
    cli.main(["probe"])
    assert seen == ["/from/env", "/flag", None]


def test_missing_command_module_exits_2(monkeypatch, capsys):
    monkeypatch.setitem(cli.COMMANDS, "ghost", ("meta1lite.no_such_module:main", "config", "t"))
    assert cli.main(["ghost"]) == 2
    assert "not available" in capsys.readouterr().err


def test_invalid_config_exits_1_and_lists_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(cli.COMMANDS, "probe", (lambda cfg, argv: 0, "config", "t"))
    bad = tmp_path / "bad.conf"
    bad.write_text("smtps { listen = { nowhere }; }\n")
    assert cli.main(["probe", "-c", str(bad)]) == 1
    assert "%s:1:20: error:" % bad in capsys.readouterr().err
    assert cli.main(["probe", "-c", str(tmp_path / "missing.conf")]) == 2


def test_sendmail_entry_point_accepts_dash_capital_c(monkeypatch):
    seen = []
    monkeypatch.setitem(cli.COMMANDS, "sendmail",
                        (lambda cfg, argv: seen.append((cfg["config_file"], argv)), "config", "t"))
    good = os.path.join(ROOT, "conf/meta1lite.conf")
    monkeypatch.setattr("sys.argv", ["meta1lite-sendmail", "-C", good, "-t", "-i"])
    assert entry.sendmail_main() == 0
    assert seen == [(good, ["-t", "-i"])]


def test_help_lists_the_commands(capsys):
    assert cli.main(["help"]) == 0
    out = capsys.readouterr().out
    for name in ("check", "run", "sendmail", "queue", "mailq", "passwd", "status"):
        assert name in out


def test_micropython_entry_point_parses_run_and_loads_the_config(tmp_path):
    bad = tmp_path / "bad.conf"
    bad.write_text("qmgr { retry_min = soon; }\n")
    proc = run_micropython(["-m", "meta1lite", "run", "-c", str(bad)])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert b"bad.conf:1:20: error: bad duration 'soon'" in proc.stderr
    proc = run_micropython(["-m", "meta1lite", "-c", str(bad), "run"])
    assert proc.returncode == 1
    proc = run_micropython(["-m", "meta1lite", "queue"])
    assert proc.returncode == 2 and b"usage" in proc.stderr
