# meta1lite.cli.passwd - `meta1lite passwd USER`: add a user to the AUTH users file
# or change its password (CPython only).
#
# Owns: reading the new password (twice from the terminal, once from a pipe),
# rewriting the users file named by smtps.auth.users atomically (temp file in the
# same directory, fsync, rename, directory sync) with mode 0600. Must never: echo,
# log or store a password in clear, leave a half-written users file, or loosen the
# file's permissions.
import getpass
import os
import sys

from meta1lite import durable
from meta1lite.const import const
from meta1lite.smtps import authdb

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
USAGE = "usage: meta1lite passwd USER   (the password from the terminal, or one line on stdin)"
_FILE_MODE = const(0o600)
_MAX_PASSWORD = const(1024)     # bytes; a longer line on stdin is refused


class PasswdError(Exception):
    pass


def read_password(stdin=None):
    """The new password: asked twice on a terminal, else the first line of stdin."""
    stream = sys.stdin if stdin is None else stdin
    if stream.isatty():
        first = getpass.getpass("New password: ")
        if getpass.getpass("Retype new password: ") != first:
            raise PasswdError("the passwords do not match; nothing changed")
        password = first
    else:
        password = stream.readline(_MAX_PASSWORD + 2).rstrip("\r\n")
    if not password:
        raise PasswdError("empty password; nothing changed")
    if len(password.encode()) > _MAX_PASSWORD:
        raise PasswdError("password longer than %d bytes; nothing changed" % _MAX_PASSWORD)
    return password


def users_path(cfg):
    """The users file of smtps.auth.users, or None when AUTH is not configured."""
    auth = cfg["smtps"].get("auth")
    return auth.get("users") if auth else None


def _read_existing(path):
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return ""
    authdb.parse_users(text, path)          # refuse to rewrite a file we cannot read
    return text


def write_users(path, text):
    """Replace the users file by text: temp file, fsync, rename, dir sync; mode 0600."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, ".%s.tmp%d" % (os.path.basename(path), os.getpid()))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _FILE_MODE)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            durable.fsync_file(f)
        os.chmod(tmp, _FILE_MODE)
        durable.commit_file(tmp, path, directory)
    except BaseException:
        durable.remove(tmp)
        raise


def main(cfg, argv, stdin=None):
    """`meta1lite passwd USER`; returns the exit status."""
    if len(argv) != 1 or argv[0].startswith("-"):
        sys.stderr.write("meta1lite: %s\n" % USAGE)
        return EXIT_USAGE
    user = argv[0]
    path = users_path(cfg)
    if not path:
        sys.stderr.write("meta1lite passwd: AUTH is not configured: set smtps { auth { users = \"FILE\"; } }"
                         " in %s\n" % (cfg.get("config_file") or "the configuration"))
        return EXIT_USAGE
    try:
        text = _read_existing(path)
        authdb.set_user("", user, "-")          # a bad user name fails before the prompt
        new_text = authdb.set_user(text, user, authdb.hash_password(read_password(stdin)))
        write_users(path, new_text)
    except (PasswdError, authdb.AuthFileError, ValueError) as exc:
        sys.stderr.write("meta1lite passwd: %s\n" % exc)
        return EXIT_FAIL
    except OSError as exc:
        sys.stderr.write("meta1lite passwd: cannot write %s: %s\n" % (path, exc))
        return EXIT_FAIL
    except (KeyboardInterrupt, EOFError):
        sys.stderr.write("\nmeta1lite passwd: nothing changed\n")
        return EXIT_FAIL
    sys.stderr.write("meta1lite passwd: password for %s set in %s\n" % (user, path))
    return EXIT_OK
