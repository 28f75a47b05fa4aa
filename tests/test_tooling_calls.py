# The host-side tools call the test helpers they share with the tests: a helper's
# signature that changes must change every caller, including the benchmarks and
# scripts that no test runs (benchmarks/board.py --sessions still passed
# sim_config(control_port=...) after the parameter was removed). CPython-only.
import ast
import inspect
import os

from helpers.board import sim_config
from helpers.upy import ROOT

FOLDERS = ("benchmarks", "scripts", "boards", "tests")


def _python_files():
    for folder in FOLDERS:
        for top, dirs, files in os.walk(os.path.join(ROOT, folder)):
            dirs[:] = [d for d in dirs if d not in ("build", "__pycache__")]
            for name in files:
                if name.endswith(".py"):
                    yield os.path.join(top, name)


def test_every_sim_config_call_uses_parameters_it_has():
    accepted = set(inspect.signature(sim_config).parameters)
    wrong = []
    for path in _python_files():
        with open(path) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "sim_config":
                for kw in node.keywords:
                    if kw.arg is not None and kw.arg not in accepted:
                        wrong.append("%s:%d: %s=" % (os.path.relpath(path, ROOT), node.lineno, kw.arg))
    assert not wrong, wrong
