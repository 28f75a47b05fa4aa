# The command line of meta1lite (CPython and the MicroPython unix port; never
# imported on a board, nor by `run` on MicroPython: the daemon's heap keeps none of it).
# Owns: finding the configuration (-c FILE before or after the command,
# sendmail's -C FILE, $META1LITE_CONF, else the embedded default), the dispatch
# table COMMANDS, and `meta1lite check`. Must never implement a command's work
# itself: commands live in their own modules, imported lazily by name.
#
# Dispatch contract. COMMANDS maps a name to (target, wants, help):
#   target  a function, or "package.module:function" imported only when used;
#   wants   "config": target(cfg, argv) gets the loaded Config (a plain dict;
#                     cfg["config_file"] is the path, None for the default);
#           "path":   target(path_or_None, argv) loads (or checks) it itself.
# argv is what follows the command, with -c FILE (and -C FILE for sendmail)
# removed. The target's return value (an int, or None = 0) is the exit status.
# A missing module or function exits 2 with a message. An invalid configuration
# exits 1 (every error printed), an unreadable one 2 (sendmail: 78, EX_CONFIG).
import os
import sys

from meta1lite import compat, conf
from meta1lite.const import const

USAGE = "usage: meta1lite [-c FILE] COMMAND [ARGS...]   (meta1lite help: the commands)"
_ENV_CONF = const("META1LITE_CONF")
EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2
_EXIT_SENDMAIL_CONFIG = const(78)  # sysexits EX_CONFIG


def _mailq(cfg, argv):
    return _call("meta1lite.cli.queuetool:main", cfg, ["list"] + list(argv))


def cmd_check(path, argv):
    """`meta1lite check`: every error to stderr as FILE:LINE:COL: error: ...;
    exit 0 valid, 1 invalid, 2 unreadable or bad usage."""
    if argv:
        return _usage("check takes no arguments besides -c FILE")
    if path is None:
        conf.load(None)
        print("%s: ok (embedded default)" % conf.DEFAULT_FILENAME)
        return EXIT_OK
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeError) as exc:
        sys.stderr.write("meta1lite: cannot read %s: %s\n" % (path, compat.os_error_text(exc)))
        return EXIT_USAGE
    errors = conf.check(text, path)
    for error in errors:
        sys.stderr.write("%s\n" % error)
    if errors:
        return EXIT_INVALID
    print("%s: ok" % path)
    return EXIT_OK


def cmd_help(path, argv):
    """List the commands."""
    print(USAGE)
    for name in sorted(COMMANDS):
        print("  %-9s %s" % (name, COMMANDS[name][2]))
    return EXIT_OK


COMMANDS = {
    "check": (cmd_check, "path", "validate the configuration (FILE:LINE:COL: error: ...)"),
    "help": (cmd_help, "path", "this list"),
    "run": ("meta1lite.mcp:main", "config", "run the daemon in the foreground"),
    "sendmail": ("meta1lite.cli.sendmail:main", "config", "inject a message from stdin"),
    "queue": ("meta1lite.cli.queuetool:main", "config", "list|show|flush|delete|hold|release [--json]"),
    "mailq": (_mailq, "config", "= queue list"),
    "passwd": ("meta1lite.cli.passwd:main", "config", "add or change an AUTH user"),
    "status": ("meta1lite.cli.queuetool:status_main", "config", "the daemon's state [--json]"),
    "reload": ("meta1lite.cli.daemonctl:reload_main", "config", "the daemon re-reads its configuration"),
    "stop": ("meta1lite.cli.daemonctl:stop_main", "config", "the daemon stops in order"),
}


def _usage(message):
    sys.stderr.write("meta1lite: %s\n%s\n" % (message, USAGE))
    return EXIT_USAGE


def _resolve(target):
    if callable(target):
        return target
    module_name, _, function = target.partition(":")
    try:
        module = __import__(module_name, None, None, [function])
    except ImportError as exc:
        if getattr(exc, "name", None) not in (module_name, None):
            raise
        return None
    return getattr(module, function, None)


def _call(target, first, argv):
    function = _resolve(target)
    if function is None:
        sys.stderr.write("meta1lite: this command is not available: %s is missing\n" % target)
        return EXIT_USAGE
    status = function(first, argv)
    return EXIT_OK if status is None else status


def split_config(argv, flags=("-c", "--config")):
    """Remove every `-c FILE` / `-cFILE` / `--config=FILE` from argv (up to a
    `--`); return (path or None, rest). Raises ValueError if FILE is missing."""
    path, rest, i = None, [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            return path, rest + argv[i:]
        if arg in flags:
            if i + 1 >= len(argv):
                raise ValueError("%s needs a FILE" % arg)
            path, i = argv[i + 1], i + 2
            continue
        if arg[:2] in flags and len(arg) > 2 and not arg.startswith("--"):
            path = arg[2:]
        elif arg.startswith("--config="):
            path = arg[len("--config="):]
        else:
            rest.append(arg)
        i += 1
    return path, rest


def _load(name, path):
    bad_file = _EXIT_SENDMAIL_CONFIG if name == "sendmail" else EXIT_USAGE
    try:
        return conf.load(path), EXIT_OK
    except conf.ConfigError as exc:
        sys.stderr.write("%s\n" % exc)
        return None, bad_file if name == "sendmail" else EXIT_INVALID
    except (OSError, UnicodeError) as exc:
        sys.stderr.write("meta1lite: cannot read %s: %s\n" % (path, compat.os_error_text(exc)))
        return None, bad_file


def main(argv=None):
    """Entry point of `meta1lite`; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        path, argv = split_config(argv)
        if not argv or argv[0].startswith("-"):
            return _usage("no command given" if not argv else "unknown option %s" % argv[0])
        name = argv[0].lower()
        flags = ("-c", "--config", "-C") if name == "sendmail" else ("-c", "--config")
        later, argv = split_config(argv[1:], flags)
    except ValueError as exc:
        return _usage(str(exc))
    if name not in COMMANDS:
        return _usage("unknown command %r" % name)
    path = later or path or os.getenv(_ENV_CONF) or None
    target, wants, _ = COMMANDS[name]
    if wants == "path":
        return _call(target, path, argv)
    cfg, status = _load(name, path)
    return status if cfg is None else _call(target, cfg, argv)
