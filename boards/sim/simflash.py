# boards/sim/simflash.py - the simulated board's flash chip: a block device backed by a
# host file, for vfs.VfsLfs2 (frozen into the sim firmware; runs on MicroPython only).
#
# Owns: the extended block-device protocol (readblocks/writeblocks with an offset,
# ioctl 1-6, 6 = erase), the wear counters (reads, programs, erases, bytes programmed)
# kept in a 16-byte file beside the image so the host can read them while the board
# runs, and the power cut: after N mutating operations (programs + erases) the
# operation tears (only its first half reaches the image, like dying flash) and the
# process is killed at once.
# Must never: allocate per call (a board's flash driver is C: every buffer is made in
# __init__ or frozen in flash; reads use readinto), keep a reference to a buffer it is
# given (littlefs passes a bytearray that lives on the C stack), or buffer writes in RAM.
import array
import os

from micropython import const

# Constants are const() with a leading underscore: compiled in, no entry in the
# module's dict (the heap a board's C driver does not take)
_IOCTL_INIT = const(1)
_IOCTL_DEINIT = const(2)
_IOCTL_SYNC = const(3)
_IOCTL_BLOCK_COUNT = const(4)
_IOCTL_BLOCK_SIZE = const(5)
_IOCTL_BLOCK_ERASE = const(6)
_READS = const(0)               # the counters, in this order: 4 native uint32 in the
_PROGRAMS = const(1)            # file COUNTERS_SUFFIX beside the image
_ERASES = const(2)
_PROG_BYTES = const(3)
COUNTERS_SUFFIX = ".counters"
HOST_ENVIRON = "/proc/self/environ"
KILL_COMMAND = "kill -9 $PPID"  # the power cut: the shell's parent is this process
ENV_IMAGE = "SIM_FLASH"
ENV_GEOMETRY = "SIM_FLASH_GEOMETRY"     # "block_size,block_count,progsize"
ENV_CUT = "SIM_POWER_CUT_AFTER"         # programs + erases before the power fails
# What an erase writes at a time (NOR flash reads 0xFF after an erase): a literal,
# frozen in flash with the code. A buffer made in __init__ (a block: 4K, later 256
# bytes) was heap that a Pico's flash driver (C, rp2.Flash) never takes.
_ERASED = b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"


class FileFlash:
    """A NOR-like flash of block_count blocks of block_size bytes in file `path`."""

    def __init__(self, path, block_size, block_count, progsize, cut_after=0):
        self.block_size = block_size
        self.block_count = block_count
        self.progsize = progsize
        self.cut_after = cut_after
        self.f = open(path, "r+b")
        self.ctr = array.array("I", [0, 0, 0, 0])
        self.ctr_file = open(path + COUNTERS_SUFFIX, "wb")
        self._save()

    def _save(self):
        self.ctr_file.seek(0)
        self.ctr_file.write(self.ctr)

    def _mutating(self):
        """Count a program or erase; True when the power fails during this one."""
        if self.cut_after <= 0:
            return False
        return self.ctr[_PROGRAMS] + self.ctr[_ERASES] + 1 >= self.cut_after

    def readblocks(self, block, buf, offset=0):
        self.f.seek(block * self.block_size + offset)
        self.f.readinto(buf)
        self.ctr[_READS] += 1
        self._save()

    def writeblocks(self, block, buf, offset=0):
        self.f.seek(block * self.block_size + offset)
        if self._mutating():
            self.f.write(memoryview(buf)[:len(buf) // 2])
            power_fail()
        self.f.write(buf)
        self.ctr[_PROGRAMS] += 1
        self.ctr[_PROG_BYTES] += len(buf)
        self._save()

    def erase(self, block):
        self.f.seek(block * self.block_size)
        if self._mutating():
            self._write_erased(self.block_size // 2)
            power_fail()
        self._write_erased(self.block_size)
        self.ctr[_ERASES] += 1
        self._save()
        return 0

    def _write_erased(self, count):
        # count: a multiple of len(_ERASED) (a block, half a block)
        while count > 0:
            self.f.write(_ERASED)
            count -= len(_ERASED)

    def ioctl(self, op, arg):
        if op == _IOCTL_BLOCK_COUNT:
            return self.block_count
        if op == _IOCTL_BLOCK_SIZE:
            return self.block_size
        if op == _IOCTL_BLOCK_ERASE:
            return self.erase(arg)
        if _IOCTL_INIT <= op <= _IOCTL_SYNC:
            return 0
        return None

    def counters(self):
        """(reads, programs, erases, bytes programmed) so far."""
        return tuple(self.ctr)

    def report(self):
        print("simflash: reads=%d programs=%d erases=%d prog_bytes=%d" % self.counters())

    def close(self):
        self._save()
        self.f.close()
        self.ctr_file.close()


def power_fail():
    """Kill this process now, as a power cut would (no cleanup, no exception)."""
    print("simflash: power cut")
    os.system(KILL_COMMAND)
    while True:         # never return into the filesystem
        pass


SIM_PREFIX = b"SIM_"


def host_env(name):
    """The host's environment variable `name` (one of the sim's own, SIM_...), or
    None (always for a name without that prefix). The sim firmware has no os.getenv,
    as a board has none (the relay must not come to need it): the process's
    environment is read from the host's /proc at each call, and nothing of it is
    kept (its size is the host's: the board's heap must not pay for it). Asked only
    before the relay starts and after it stops (simboot)."""
    wanted = name.encode()
    if not wanted.startswith(SIM_PREFIX):
        return None
    with open(HOST_ENVIRON, "rb") as f:
        for entry in f.read().split(b"\0"):
            key, _, value = entry.partition(b"=")
            if key == wanted:               # other keys may be any bytes
                return value.decode()
    return None


def from_env():
    """The flash the host wired in: SIM_FLASH, SIM_FLASH_GEOMETRY, SIM_POWER_CUT_AFTER."""
    path = host_env(ENV_IMAGE)
    if not path:
        raise OSError("simflash: %s is not set" % ENV_IMAGE)
    geometry = [int(x) for x in host_env(ENV_GEOMETRY).split(",")]
    cut = int(host_env(ENV_CUT) or "0")
    return FileFlash(path, geometry[0], geometry[1], geometry[2], cut)
