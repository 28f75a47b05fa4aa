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
# __init__; reads use readinto), keep a reference to a buffer it is given (littlefs
# passes a bytearray that lives on the C stack), or buffer writes in RAM.
import array
import os

IOCTL_INIT = 1
IOCTL_DEINIT = 2
IOCTL_SYNC = 3
IOCTL_BLOCK_COUNT = 4
IOCTL_BLOCK_SIZE = 5
IOCTL_BLOCK_ERASE = 6
ERASED = 0xFF                   # NOR flash reads 0xFF after an erase
READS, PROGRAMS, ERASES, PROG_BYTES = 0, 1, 2, 3
COUNTERS_SUFFIX = ".counters"   # beside the image: 4 native uint32, see READS..PROG_BYTES
HOST_ENVIRON = "/proc/self/environ"
KILL_COMMAND = "kill -9 $PPID"  # the power cut: the shell's parent is this process
ENV_IMAGE = "SIM_FLASH"
ENV_GEOMETRY = "SIM_FLASH_GEOMETRY"     # "block_size,block_count,progsize"
ENV_CUT = "SIM_POWER_CUT_AFTER"         # programs + erases before the power fails
# Bytes of 0xFF written at a time by an erase: a block-sized buffer was 4K of the
# board's GC heap that a Pico's flash driver (C, rp2.Flash) never takes.
ERASE_CHUNK = 256


class FileFlash:
    """A NOR-like flash of block_count blocks of block_size bytes in file `path`."""

    def __init__(self, path, block_size, block_count, progsize, cut_after=0):
        self.block_size = block_size
        self.block_count = block_count
        self.progsize = progsize
        self.cut_after = cut_after
        self.f = open(path, "r+b")
        self.erased = bytearray(b"\xff" * min(block_size, ERASE_CHUNK))
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
        return self.ctr[PROGRAMS] + self.ctr[ERASES] + 1 >= self.cut_after

    def readblocks(self, block, buf, offset=0):
        self.f.seek(block * self.block_size + offset)
        self.f.readinto(buf)
        self.ctr[READS] += 1
        self._save()

    def writeblocks(self, block, buf, offset=0):
        self.f.seek(block * self.block_size + offset)
        if self._mutating():
            self.f.write(memoryview(buf)[:len(buf) // 2])
            power_fail()
        self.f.write(buf)
        self.ctr[PROGRAMS] += 1
        self.ctr[PROG_BYTES] += len(buf)
        self._save()

    def erase(self, block):
        self.f.seek(block * self.block_size)
        if self._mutating():
            self._write_erased(self.block_size // 2)
            power_fail()
        self._write_erased(self.block_size)
        self.ctr[ERASES] += 1
        self._save()
        return 0

    def _write_erased(self, count):
        chunk = len(self.erased)
        while count >= chunk:
            self.f.write(self.erased)
            count -= chunk
        if count:
            self.f.write(memoryview(self.erased)[:count])

    def ioctl(self, op, arg):
        if op == IOCTL_BLOCK_COUNT:
            return self.block_count
        if op == IOCTL_BLOCK_SIZE:
            return self.block_size
        if op == IOCTL_BLOCK_ERASE:
            return self.erase(arg)
        if op in (IOCTL_INIT, IOCTL_DEINIT, IOCTL_SYNC):
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


_host_environ = []              # the host's SIM_ variables, read once: [(key, value)]
SIM_PREFIX = b"SIM_"            # the rest of the host's environment is not kept: its size
                                # is the host's, and the board's heap must not pay for it


def host_env(name):
    """The host's environment variable `name` (one of the sim's own, SIM_...), or
    None (always for a name without that prefix: only those are kept). The sim
    firmware has no os.getenv, as a board has none (the relay must not come to need
    it): the process's environment is read from the host's /proc instead."""
    if not _host_environ:               # (the sim's own variables are always set)
        with open(HOST_ENVIRON, "rb") as f:
            for entry in f.read().split(b"\0"):
                key, _, value = entry.partition(b"=")
                if key.startswith(SIM_PREFIX):
                    _host_environ.append((key, value))
    wanted = name.encode()
    for key, value in _host_environ:
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
