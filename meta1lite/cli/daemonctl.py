# meta1lite.cli.daemonctl - `meta1lite reload` and `meta1lite stop`, on both runtimes:
# mcp's requests sent to the running daemon over its control channel (the
# MicroPython unix port has no signals: this is how it reloads and stops).
#
# Owns: printing mcp's answer (a refused reload prints the configuration's errors
# as FILE:LINE:COL: error: ..., exit 1) and, for stop, waiting until the daemon no
# longer answers. Exit status: 0 done, 1 refused or no daemon, 2 bad usage.
# Must never: signal a process or touch the spool (mcp does the work).
import sys
import time

from meta1lite import compat
from meta1lite.cli.queuetool import EXIT_FAIL, EXIT_OK, EXIT_USAGE, DaemonDown, _where, request
from meta1lite.const import const

_STOP_WAIT_MARGIN_S = const(5)  # beyond mcp.stop_timeout, how long stop waits for the exit
STOP_POLL_S = 0.1


def _ask(cfg, argv, verb):
    if argv:
        sys.stderr.write("meta1lite: %s takes no arguments besides -c FILE\n" % verb)
        return None, EXIT_USAGE
    try:
        reply = request(cfg, verb)
    except DaemonDown:
        sys.stderr.write("meta1lite: not running (nobody answers on %s)\n" % _where(cfg))
        return None, EXIT_FAIL
    if not reply.get("ok"):
        sys.stderr.write("%s\n" % reply.get("error", "refused"))
        return None, EXIT_FAIL
    return reply, EXIT_OK


def reload_main(cfg, argv):
    """`meta1lite reload`: every module takes the file's configuration, or none does."""
    reply, status = _ask(cfg, argv, "reload")
    if reply is not None:
        print("meta1lite: configuration reloaded")
    return status


def stop_main(cfg, argv):
    """`meta1lite stop`: the orderly stop; returns when the daemon is gone."""
    reply, status = _ask(cfg, argv, "stop")
    if reply is None:
        return status
    deadline = compat.monotonic() + cfg["mcp"]["stop_timeout"] + _STOP_WAIT_MARGIN_S
    while compat.monotonic() < deadline:
        try:
            request(cfg, "ping")
        except (DaemonDown, ValueError):
            print("meta1lite: stopped")
            return EXIT_OK
        time.sleep(STOP_POLL_S)
    sys.stderr.write("meta1lite: still answering on %s\n" % _where(cfg))
    return EXIT_FAIL
