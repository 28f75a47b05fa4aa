# meta1lite.durable - durable file primitives on both runtimes: flushing a file to
# stable storage, making directory entries durable, atomic rename, and the file and
# filesystem queries the spool needs (exists, sizes, free space).
# Owns: how each runtime makes bytes and names survive a power cut (docs/design.md,
# "Queue guarantees"). Must never: decide what to write or when (the spool's
# business), or swallow an error other than a missing file where it says so.
import errno
import os

from meta1lite.compat import errno_of

CAN_SYNC_DIR = hasattr(os, "fsync") and hasattr(os, "O_RDONLY")   # see sync_dir()


def fsync_file(f):
    """Flush a file to stable storage (MicroPython: flush() fsyncs / syncs LittleFS)."""
    f.flush()
    if hasattr(os, "fsync"):
        os.fsync(f.fileno())


CAN_SYNC_ALL = hasattr(os, "system")   # the unix port: see sync_all()


def sync_all():
    """Flush every file system with the `sync` command: the unix port's only way to
    make new directory entries durable (it has no fsync of a directory)."""
    return os.system("sync") == 0


def sync_dir(path):
    """Make directory entries (new files, renames) in `path` durable where possible.

    CPython/POSIX: fsync of the directory. The MicroPython unix port has no way to
    do this; LittleFS commits metadata itself. Returns True if a sync happened."""
    if not CAN_SYNC_DIR:
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def sync_new_entries(path):
    """Make new directory entries in `path` durable: an fsync of the directory
    (POSIX), the `sync` command (the MicroPython unix port, which cannot fsync a
    directory), nothing on LittleFS (a file's entry commits with the file). False if
    it could not be done here."""
    if sync_dir(path):
        return True
    return sync_all() if CAN_SYNC_ALL and _on_host_fs(path) else True


def _on_host_fs(path):
    # MicroPython: True unless path is on a LittleFS (or FAT) mount, such as the sim
    # board's flash, which commits its own entries
    kind = mount_type(path)
    return kind is None or kind == "VfsPosix"


def mount_type(path):
    """MicroPython: the class name of the filesystem mounted over path ("VfsLfs2",
    "VfsFat", "VfsPosix"), or None (CPython, or no mount table)."""
    try:
        import vfs
        mounts = vfs.mount()
        if not path.startswith("/"):        # relative to the current folder (stm32: /flash)
            path = os.getcwd().rstrip("/") + "/" + (path[2:] if path.startswith("./") else path)
    except (ImportError, AttributeError, TypeError, OSError):
        return None
    best = None
    for fs, point in mounts:
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) > len(best[1])):
            best = (fs, point)
    return None if best is None else type(best[0]).__name__


def rename(src, dst):
    """Atomic replace of dst by src (POSIX and LittleFS; never FAT)."""
    os.rename(src, dst)


def commit_file(tmp_path, final_path, directory):
    """Rename a synced temporary into place and make the rename durable."""
    rename(tmp_path, final_path)
    sync_dir(directory)


def exists(path):
    """True if path exists."""
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def is_dir(path):
    """True if path is a directory."""
    try:
        return bool(os.stat(path)[0] & 0x4000)
    except OSError:
        return False


def file_size(path):
    """Size in bytes of a file (raises OSError if missing)."""
    return os.stat(path)[6]


def makedirs(path):
    """mkdir -p; each directory it makes is durable in its parent (POSIX: the
    parent's fsync; the unix port's first segment runs `sync`; LittleFS commits it)."""
    if not path or is_dir(path):
        return
    parent = path.rstrip("/").rsplit("/", 1)[0] if "/" in path.rstrip("/") else ""
    if parent and parent != path:
        makedirs(parent)
    try:
        os.mkdir(path)
    except OSError:
        if not is_dir(path):
            raise
        return
    sync_dir(parent or ("/" if path.startswith("/") else "."))


def remove(path):
    """Remove a file; a missing file is not an error."""
    try:
        os.remove(path)
    except OSError as exc:
        if errno_of(exc) != errno.ENOENT:
            raise


def free_space(path):
    """Bytes free for an unprivileged writer on the filesystem holding path."""
    st = os.statvfs(path)
    return st[1] * st[4]     # f_frsize * f_bavail, same tuple order on both runtimes


def fs_size(path):
    """Bytes an unprivileged writer could use on the empty filesystem holding path
    (f_blocks less the root reserve, f_bfree - f_bavail)."""
    st = os.statvfs(path)
    return st[1] * (st[2] - (st[3] - st[4]))     # f_frsize * (f_blocks - reserved)


def write_all(f, data):
    """Write all of data to an unbuffered file (loops over short writes)."""
    mv = memoryview(data)
    while len(mv):
        n = f.write(mv)
        if not n:
            raise OSError(5, "short write")
        mv = mv[n:]
