# boards/sim/main.py - main.py of the simulated Pico W (frozen into the sim firmware;
# `micropython -m main` runs it). MicroPython only.
# Owns the board's boot: mount the flash (simflash, wired in by the host through
# SIM_FLASH*) as LittleFS2 at /flash with the profile's progsize, run the relay from
# /flash/meta1lite.conf (m1lboot), print the flash counters at exit. Network is the
# host's loopback. Also the two tools the host launcher runs on the board before the
# first boot: format_flash() and put() (as mpremote would on a real board).
# Must never: format a flash that does not mount unless asked (format_flash()), or start
# the relay without the flash mounted.
import sys

import m1lboot
import simflash
import vfs

MOUNT = "/flash"
COPY_CHUNK = 512
HEAP_UNLOCK_TRIES = 4          # nesting depth of heap locks undone at shutdown


def mount(flash):
    fs = vfs.VfsLfs2(flash, progsize=flash.progsize)
    vfs.mount(fs, MOUNT)


def format_flash():
    """Make a fresh LittleFS2 on the wired flash (the host launcher's first step)."""
    flash = simflash.from_env()
    vfs.VfsLfs2.mkfs(flash, progsize=flash.progsize)
    flash.close()


def put(host_path, name):
    """Copy a host file into /flash/NAME (the launcher's mpremote cp)."""
    flash = simflash.from_env()
    mount(flash)
    buf = bytearray(COPY_CHUNK)
    with open(host_path, "rb") as src, open(MOUNT + "/" + name, "wb") as dst:
        while True:
            n = src.readinto(buf)
            if not n:
                break
            dst.write(memoryview(buf)[:n])
    vfs.umount(MOUNT)
    flash.close()


def _unlock_heap():
    # The harness stops the sim with SIGINT; a KeyboardInterrupt that lands while a
    # collection runs a finaliser (LittleFS closing a file through this Python block
    # device) can leave the heap locked, and the report below could not allocate.
    import micropython
    for _ in range(HEAP_UNLOCK_TRIES):
        try:
            bytearray(1)
            return
        except MemoryError:
            micropython.heap_unlock()


def main():
    flash = simflash.from_env()
    mount(flash)
    try:
        status = m1lboot.run(MOUNT)
    finally:
        _unlock_heap()
        flash.report()
        vfs.umount(MOUNT)
        flash.close()
    sys.exit(status or 0)


if __name__ == "__main__":
    main()
