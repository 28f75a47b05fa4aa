# Helpers for the shared-code unit tests that run under CPython (pytest) and under
# the MicroPython unix port (tests/helpers/upy_runner.py). Must stay in the shared subset:
# no pytest, no f-strings, no typing.
import os

_counter = [0]


def raises(exc_type, fn, *args, **kwargs):
    """Call fn and return the exception of exc_type it raised; fail if none."""
    try:
        fn(*args, **kwargs)
    except exc_type as exc:
        return exc
    raise AssertionError("%s not raised by %r" % (exc_type.__name__, fn))


def rmtree(path):
    """rm -r (no shutil on MicroPython)."""
    for name in os.listdir(path):
        full = path + "/" + name
        if os.stat(full)[0] & 0x4000:
            rmtree(full)
        else:
            os.remove(full)
    os.rmdir(path)


def fresh_dir(tag):
    """An empty scratch directory under $TMPDIR (or /tmp), unique to this process."""
    base = os.getenv("TMPDIR") or "/tmp"
    _counter[0] += 1
    path = "%s/m1l-%s-%d-%d" % (base, tag, _counter[0], int.from_bytes(os.urandom(4), "big"))
    try:
        rmtree(path)
    except OSError:
        pass
    os.mkdir(path)
    return path


def repo_root():
    """The checkout's top folder (tests/core/../..)."""
    here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
    return here + "/../.."
