# The hardware-in-the-loop suite's options and its board fixture. CPython-only.
# Owns: --board (sim, the default and what CI runs; or a folder of boards/ for real
# hardware), --port (the real board's serial console), --board-host (its IP address)
# and --hop-host (this host's address as the board sees it); one Rig per test.
# Must never: skip a test (the sim runs everywhere the sim firmware builds).
import pytest
from helpers.hil import Rig


def pytest_addoption(parser):
    group = parser.getgroup("hil", "hardware in the loop (tests/hil)")
    group.addoption("--board", default="sim", help="sim (default) or a folder of boards/")
    group.addoption("--port", default=None, help="a real board's serial console, e.g. /dev/ttyACM0")
    group.addoption("--board-host", default=None, help="a real board's IP address")
    group.addoption("--hop-host", default=None,
                    help="this host's IP address as a real board reaches it (the next hop)")


@pytest.fixture
def rig(request, tmp_path):
    opt = request.config.getoption
    if opt("--board") != "sim" and not (opt("--port") and opt("--board-host") and opt("--hop-host")):
        raise pytest.UsageError("a real board needs --port, --board-host and --hop-host")
    r = Rig(tmp_path, opt("--board"), opt("--port"), opt("--board-host"), opt("--hop-host"))
    yield r
    r.close()
