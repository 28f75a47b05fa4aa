# meta1lite.spool.lock - one process writes a spool: the lock `meta1lite run`
# holds for its life and the queue tools take for a direct change.
#
# Owns: the lock's two runtime implementations (they live here, not in compat.py,
# because only the spool's writers use them). CPython takes fcntl.flock on
# SPOOL/lock (the kernel drops it however the process dies). The MicroPython unix
# port has no fcntl, no O_EXCL and no os.getpid: there the lock is the directory
# SPOOL/lock.d (os.mkdir is atomic) with a file "pid" in it; a pid whose
# /proc/PID/cmdline does not mention meta1lite (dead, a zombie, reused by another
# program) is stale. CPython takes both, so the runtimes exclude each other. A
# board (no /proc, no pid) runs one process: no lock. Must never: take a lock a
# live meta1lite holds, or leave a half-taken lock behind on failure.
import errno
import os
import time

from meta1lite.compat import errno_of, own_pid
from meta1lite.durable import makedirs, remove

LOCK_FILE = "lock"
LOCK_DIR = "lock.d"
LOCK_PID = "pid"
LOCK_TRIES = 10             # looks at lock.d before an empty one is taken as stale
LOCK_WAIT_S = 0.1           # between those looks (another starter writing its pid)
LOCK_MARK = b"meta1lite"    # what a live holder's command line contains


class SpoolBusy(Exception):
    """Another live process holds the spool lock (.pid: its pid, or None)."""

    def __init__(self, path, pid):
        super().__init__("spool %s is in use by pid %s" % (path, pid or "unknown"))
        self.pid = pid


def pid_is_meta1lite(pid):
    """True if process pid is alive and its command line mentions meta1lite."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return LOCK_MARK in f.read(4096)
    except OSError:
        return False


def _read_pid(lock_dir):
    try:
        with open(lock_dir + "/" + LOCK_PID, "rb") as f:
            return int(f.read(32).strip() or b"x")
    except (OSError, ValueError):
        return None


def _flock(path, spool):
    try:
        import fcntl
    except ImportError:
        return None             # MicroPython: the directory alone
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise SpoolBusy(spool, _read_pid(spool + "/" + LOCK_DIR))
    return fd


def _remove_dir(lock_dir):
    remove(lock_dir + "/" + LOCK_PID)
    try:
        os.rmdir(lock_dir)
    except OSError:
        pass


def _drop_dir(lock_dir, stale_pid):
    if _read_pid(lock_dir) == stale_pid:    # else taken over meanwhile: look again
        _remove_dir(lock_dir)


def _take_dir(spool, me):
    lock_dir = spool + "/" + LOCK_DIR
    empty = 0
    while True:
        try:
            os.mkdir(lock_dir)
            break
        except OSError as exc:
            if errno_of(exc) != errno.EEXIST:
                raise
        pid = _read_pid(lock_dir)
        if pid is None and empty < LOCK_TRIES:
            empty += 1          # its owner may be writing the pid right now
            time.sleep(LOCK_WAIT_S)
            continue
        if pid is not None and pid != me and pid_is_meta1lite(pid):
            raise SpoolBusy(spool, pid)
        _drop_dir(lock_dir, pid)
    with open(lock_dir + "/" + LOCK_PID, "w") as f:
        f.write("%d\n" % me)


class SpoolLock:
    """The lock of one spool, held until release() (or the process's end)."""

    def __init__(self, spool):
        self.spool = spool
        self.fd = None
        self.held = False

    def release(self):
        """Give the lock up (idempotent)."""
        if self.held:
            self.held = False
            _remove_dir(self.spool + "/" + LOCK_DIR)
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def lock_spool(spool):
    """Take the spool's lock before anything reads or writes it (creates the spool
    directory if missing); raises SpoolBusy if a live process holds it."""
    spool = spool.rstrip("/") or "/"
    lock = SpoolLock(spool)
    me = own_pid()
    if me is None:
        return lock             # a board: one process, nothing to exclude
    makedirs(spool)
    lock.fd = _flock(spool + "/" + LOCK_FILE, spool)
    try:
        _take_dir(spool, me)
    except BaseException:
        lock.release()
        raise
    lock.held = True
    return lock
