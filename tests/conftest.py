# pytest hooks of the suite. Owns: counting the runs on each runtime and failing CI
# when MicroPython ran fewer. Helpers for tests live in tests/helpers/ (no test
# imports from here). CPython-only.
import os
import re
import sys

# --- CI: the MicroPython runs may not be fewer than the CPython ones ---------------
# (design.md "How it is tested"). CPython runs: tests/core/* and tests parametrized
# with runtime=cpython; MicroPython runs: test_core_on_micropython and runtime=micropython.
# .ci/pythons runs the CPython side alone under other Pythons and says so with
# M1L_CPYTHON_ONLY=1: the README's command, run before it, is the one that counts.
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
    if os.environ.get("M1L_CPYTHON_ONLY"):
        return
    if os.environ.get("CI") and _RUNS["micropython"] < _RUNS["cpython"]:
        sys.stderr.write("CI: %d MicroPython runs < %d CPython runs\n"
                         % (_RUNS["micropython"], _RUNS["cpython"]))
        session.exitstatus = 1
