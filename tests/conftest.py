# pytest fixtures shared by the suite. Owns: finding the MicroPython binary and
# running code under it. CPython-only.
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORE = os.path.join(ROOT, "tests", "core")
DEFAULT_HEAP = "192K"


def find_micropython():
    """Path of the `micropython` binary next to this interpreter, or on PATH, or None."""
    beside = os.path.join(os.path.dirname(sys.executable), "micropython")
    if os.access(beside, os.X_OK):
        return beside
    return shutil.which("micropython")


def micropython_env(*paths):
    env = dict(os.environ)
    env["MICROPYPATH"] = ":".join(list(paths) + [ROOT, ".frozen"])
    return env


def run_micropython(args, heap=DEFAULT_HEAP, paths=(), timeout=120, cwd=None, input=None):
    """Run the real micropython binary with a board-sized heap; return CompletedProcess."""
    exe = find_micropython()
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("micropython binary missing in CI (install the test extra)")
        pytest.skip("micropython binary not installable on this platform")
    cmd = [exe, "-X", "heapsize=" + heap] + list(args)
    return subprocess.run(cmd, env=micropython_env(*paths), capture_output=True,
                          timeout=timeout, cwd=cwd or ROOT, input=input)


@pytest.fixture
def micropython():
    return run_micropython


# --- CI: the MicroPython runs may not be fewer than the CPython ones ---------------
# (design.md "How it is tested"). CPython runs: tests/core/* and tests parametrized
# with runtime=cpython; MicroPython runs: test_core_on_micropython and runtime=micropython.
_RUNTIME_ID = re.compile(r"[\[-](cpython|micropython)[\]-]")
_RUNS = {"cpython": 0, "micropython": 0}


def pytest_runtest_logreport(report):
    if report.when != "call" or not report.passed:
        return
    if report.nodeid.startswith("tests/core/"):
        _RUNS["cpython"] += 1
    elif "test_core_on_micropython.py" in report.nodeid:
        _RUNS["micropython"] += 1
    else:
        found = _RUNTIME_ID.search(report.nodeid)
        if found:
            _RUNS[found.group(1)] += 1


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    terminalreporter.write_line("runs: %d on CPython, %d on MicroPython (shared code and daemon)"
                                % (_RUNS["cpython"], _RUNS["micropython"]))


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("CI") and _RUNS["micropython"] < _RUNS["cpython"]:
        sys.stderr.write("CI: %d MicroPython runs < %d CPython runs\n"
                         % (_RUNS["micropython"], _RUNS["cpython"]))
        session.exitstatus = 1
