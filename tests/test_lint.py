# ruff (pyflakes, pycodestyle errors, import order) over the whole tree, as part of
# the README's test command.
import os
import subprocess
import sys

from helpers.upy import ROOT


def test_ruff_check_is_clean():
    ruff = os.path.join(os.path.dirname(sys.executable), "ruff")
    cmd = [ruff] if os.access(ruff, os.X_OK) else [sys.executable, "-m", "ruff"]
    proc = subprocess.run(cmd + ["check", ROOT], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
