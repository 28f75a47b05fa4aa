# Runs every shared-code unit test (tests/core/test_*.py) a second time, under the
# real MicroPython unix port with a board-sized heap. A module may set
# UPY_HEAP = "64K" to run on a smaller heap. CPython-only (the driver side).
import ast
import os

import pytest
from helpers.upy import CORE, DEFAULT_HEAP, ROOT, run_micropython


def _core_tests():
    for fname in sorted(os.listdir(CORE)):
        if not (fname.startswith("test_") and fname.endswith(".py")):
            continue
        tree = ast.parse(open(os.path.join(CORE, fname)).read())
        heap = DEFAULT_HEAP
        for node in tree.body:
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "UPY_HEAP":
                heap = node.value.value
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                yield pytest.param(fname[:-3], node.name, heap, id=fname[:-3] + "::" + node.name)


@pytest.mark.parametrize("module,function,heap", list(_core_tests()))
def test_core_under_micropython(module, function, heap):
    runner = os.path.join(ROOT, "tests", "helpers", "upy_runner.py")
    proc = run_micropython([runner, module + ":" + function], heap=heap, paths=(CORE,))
    out = proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")
    assert proc.returncode == 0 and "PASS " in out, out
