# tests/helpers/upy.py - where the repository is, and running code under the real
# MicroPython unix port. Owns: finding the `micropython` binary (beside this
# interpreter, else on PATH) and the MICROPYPATH of a run. CPython-only.
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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
