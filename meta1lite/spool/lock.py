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
# board (no /proc, no pid) runs one process: no lock. Whoever takes the lock makes
# the spool's new files private (umask 077) and the spool's folder its owner's
# alone (an older spool's too); root taking it for a spool that belongs
# to mcp.user hands the lock to that user and, as a writer (sendmail, the queue
# tools), acts as that user until it lets go. Must never: take a lock a live
# meta1lite holds, or leave a half-taken lock behind on failure.
import errno
import os
import time

from meta1lite.compat import errno_of, own_pid
from meta1lite.const import const
from meta1lite.durable import is_dir, makedirs, remove
from meta1lite.spool.format import SEGMENT_DIR

LOCK_FILE = const("lock")
LOCK_DIR = const("lock.d")
LOCK_PID = const("pid")
LOCK_TRIES = const(10)      # looks at lock.d before an empty one is taken as stale
LOCK_WAIT_S = 0.1           # between those looks (another starter writing its pid)
LOCK_MARK = b"meta1lite"    # what a live holder's command line contains
LAZY_IMPORTS = ("concurrent.futures.thread",)    # the journal's sync thread (CPython)
_SPOOL_MODE = const(0o700)  # the spool's folder: its owner's alone
_PRIVATE_MASK = const(0o077)  # mode bits for the group and others
_STICKY_BIT = const(0o1000)  # a folder shared by everyone (/tmp)


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
        self.as_owner = False   # root acting as the spool's owner until release()

    def release(self):
        """Give the lock up (idempotent)."""
        if self.as_owner:
            self.as_owner = False
            os.seteuid(0)
            os.setegid(0)
        if self.held:
            self.held = False
            _remove_dir(self.spool + "/" + LOCK_DIR)
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def lock_spool(spool, as_owner=False):
    """Take the spool's lock before anything reads or writes it (creates the spool
    directory if missing); raises SpoolBusy if a live process holds it. as_owner:
    root writing a spool that belongs to another user (mcp.user) acts as that user
    until release(), so that what it creates stays the daemon's to open."""
    spool = spool.rstrip("/") or "/"
    lock = SpoolLock(spool)
    me = own_pid()
    if me is None:
        return lock             # a board: one process, nothing to exclude
    if hasattr(os, "umask"):
        os.umask(0o077)         # queued mail is nobody else's to read
    makedirs(spool)
    _make_private(spool)
    lock.fd = _flock(spool + "/" + LOCK_FILE, spool)
    try:
        _take_dir(spool, me)
        lock.held = True
        owner = _spool_owner(spool)
        if owner is not None:
            _give_lock_to(spool, owner)
            if as_owner:
                _become(owner)
                lock.as_owner = True
    except BaseException:
        lock.release()
        raise
    return lock


def _make_private(spool):
    # a spool made before files were private (0755 folders, 0644 files): closing the
    # spool's own folder closes everything in it. Only a folder that holds a queue
    # (its seg/), never one shared with others (sticky, as /tmp), is changed
    if not hasattr(os, "chmod") or not is_dir(spool + "/" + SEGMENT_DIR):
        return
    mode = os.stat(spool)[0]
    if mode & _PRIVATE_MASK and not mode & _STICKY_BIT:
        try:
            os.chmod(spool, _SPOOL_MODE)
        except OSError:
            pass                # not this user's to change: its owner's next start does


def _spool_owner(spool):
    # (uid, gid) of a spool that belongs to another user while this process is root
    if not hasattr(os, "seteuid") or os.geteuid() != 0:
        return None
    st = os.stat(spool)
    return (st[4], st[5]) if st[4] != 0 else None


def _give_lock_to(spool, owner):
    # root taking the lock of a spool that belongs to mcp.user: lock.d and its pid
    # become that user's, so that the daemon can give the lock back after dropping root
    for path in (spool + "/" + LOCK_DIR, spool + "/" + LOCK_DIR + "/" + LOCK_PID):
        os.chown(path, owner[0], owner[1])


def _become(owner):
    # effective ids only (release() takes root back); first the modules a commit
    # imports lazily, while root can still read them (a Python installed under /root)
    for name in LAZY_IMPORTS:
        try:
            __import__(name)
        except ImportError:
            pass
    os.setegid(owner[1])
    os.seteuid(owner[0])
