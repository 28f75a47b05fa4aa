# Reads the two set-up commands at the top of README.md (the first fenced block):
# line 1 installs and runs the relay, line 2 installs and passes the tests.
# .ci/run executes the test one verbatim. Usage: readme_commands.py run|test
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
README = os.path.join(ROOT, "README.md")


def setup_commands(path=README):
    """The command lines of the README's first fenced code block."""
    lines, inside = [], False
    with open(path) as f:
        for line in f:
            if line.startswith("```"):
                if inside:
                    break
                inside = True
            elif inside and line.strip():
                lines.append(line.strip())
    return lines


if __name__ == "__main__":
    which = {"run": 0, "test": 1}[sys.argv[1]]
    print(setup_commands()[which])
