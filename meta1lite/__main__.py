# Entry points: `python -m meta1lite`, the console scripts `meta1lite` and
# `meta1lite-sendmail`, and `micropython -m meta1lite COMMAND ...`.
# Owns: choosing between the full command line (cli/, both runtimes) and the
# minimal `run` parser of MicroPython (compat.MICROPYTHON), which keeps the
# daemon's heap free of the command-line tools. Must never import cli/ for `run`
# on MicroPython (on a board cli/ is not even there).
import sys

RUN_USAGE = "usage: micropython -m meta1lite [-c FILE] run [-c FILE]"


def _parse_run(argv):
    path, rest, i = None, [], 0
    while i < len(argv):
        if argv[i] in ("-c", "--config") and i + 1 < len(argv):
            path, i = argv[i + 1], i + 2
        else:
            rest.append(argv[i])
            i += 1
    if not rest or rest[0] != "run":
        return None, None
    return path, rest[1:]


def _print_errors(exc):
    sys.stderr.write("%s\n" % exc)


def micro_main(argv, on_config=None):
    """`run [-c FILE]` without cli.py (MicroPython); returns the exit status.
    A board's boot passes on_config(cfg), called once the configuration is loaded."""
    from meta1lite import compat, conf, heap
    path, rest = _parse_run(argv)
    if rest is None:
        sys.stderr.write(RUN_USAGE + "\n")
        return 2
    path = path or compat.getenv("META1LITE_CONF") or None
    try:
        cfg = conf.load(path)
    except conf.ConfigError as exc:
        _print_errors(exc)
        return 1
    except OSError as exc:
        sys.stderr.write("meta1lite: cannot read %s: %s\n" % (path, exc))
        return 2
    modules = conf.MODULES
    del conf
    heap.forget_modules(modules)          # the parser is not needed after start-up
    if on_config is not None:
        on_config(cfg)
    from meta1lite import mcp
    status = mcp.main(cfg, rest)
    return 0 if status is None else status


def _ctrl_c_ends_at_once():
    # The unix port (threads, no GIL: MICROPY_ASYNC_KBD_INTR) raises KeyboardInterrupt
    # from its SIGINT handler, out of whatever C code runs: out of a collection it leaves
    # the heap locked, out of an allocation the GC mutex held (the next allocation waits
    # for ever). No stop can be orderly after that (measured: 3 test runs of 8 under
    # load, without the 421s or hung), so Ctrl-C ends the process at once, as SIGTERM
    # does: the queue holds everything acknowledged. A board's boot (m1lboot) does not
    # come here: its Ctrl-C is raised between bytecodes, and mcp stops in order.
    import micropython
    micropython.kbd_intr(-1)


def main():
    """`meta1lite ...` (console script, python -m and micropython -m)."""
    from meta1lite.compat import MICROPYTHON
    if MICROPYTHON and _parse_run(sys.argv[1:])[1] is not None:
        _ctrl_c_ends_at_once()
        return micro_main(sys.argv[1:])
    from meta1lite import cli
    return cli.main(sys.argv[1:])


def sendmail_main():
    """`meta1lite-sendmail ...` = `meta1lite sendmail ...` (also takes -C FILE)."""
    from meta1lite import cli
    return cli.main(["sendmail"] + sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
