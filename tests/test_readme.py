# The README opens with exactly two one-line set-up commands, and .ci/run runs the
# second one verbatim.
import os

from helpers.readme_commands import setup_commands
from helpers.upy import ROOT


def test_readme_opens_with_the_two_setup_commands():
    run, test = setup_commands()
    assert len(setup_commands()) == 2
    assert "meta1lite run" in run and "sudo" not in run
    assert "pytest" in test and "[test]" in test and "sudo" not in test
    head = open(os.path.join(ROOT, "README.md")).read().split("```")[0]
    assert head.count("\n") <= 4, "the commands must come first"


def test_ci_runs_the_readme_test_command():
    script = open(os.path.join(ROOT, ".ci", "run")).read()
    assert "readme_commands.py test" in script and 'bash -c "$cmd"' in script
