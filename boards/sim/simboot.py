# boards/sim/simboot.py - the simulated Pico W's boot (frozen into the sim firmware;
# `micropython -m simboot` runs it). MicroPython only.
# Owns what a board's firmware does before and around main.py, as rp2's _boot.py and
# its main loop do: mount the flash (simflash, wired in by the host through SIM_FLASH*)
# as LittleFS2 at /flash, put /flash and /flash/lib first on the import path (the
# `.mpy` bundle of a stock firmware), run /flash/main.py when the flash has one (what
# scripts/flash copies) or else the frozen main, print the flash counters when it
# returns. With SIM_CONSOLE set (the host's console, a pseudo-terminal) the process
# then stays in the REPL with the flash still mounted, as a board does after main.py
# (not after m1lboot.reset(): then it ends); Ctrl-D there ends the process and the
# host boots it again (a reset). With SIM_UPTIME_S the relay's clock starts that many
# seconds after boot (a board up for years). Also the two
# tools the host launcher runs before a first boot: format_flash() and put().
# Must never: format a flash that does not mount unless asked (format_flash()), or run
# main.py without the flash mounted.
import os
import sys

import simflash
import vfs

MOUNT = "/flash"
MAIN = MOUNT + "/main.py"
ENV_CONSOLE = "SIM_CONSOLE"
ENV_UPTIME = "SIM_UPTIME_S"     # the board has been up this long at boot (its clock's floats)
COPY_CHUNK = 512
RESET_EXIT = 3                  # m1lboot.RESET_EXIT: main.py asked for a reset
RESET_COMMAND = "kill -TERM $PPID"  # a reset: the shell's parent is this process

_flash = []


def mount(flash):
    fs = vfs.VfsLfs2(flash, progsize=flash.progsize)
    vfs.mount(fs, MOUNT)


def format_flash():
    """Make a fresh LittleFS2 on the wired flash (the host launcher's first step)."""
    flash = simflash.from_env()
    vfs.VfsLfs2.mkfs(flash, progsize=flash.progsize)
    flash.close()


def put(host_path, name):
    """Copy a host file into /flash/NAME (before a first boot, as mpremote cp would)."""
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


def flash_report():
    """Print the flash's wear counters (the REPL can call it too)."""
    _flash[0].report()


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _finish(status):
    flash_report()
    repl = simflash.host_env(ENV_CONSOLE) and status != RESET_EXIT
    if not repl:
        vfs.umount(MOUNT)
        _flash[0].close()
    if status == RESET_EXIT:
        # m1lboot.reset() on the sim (its unix port has no machine.reset): the process
        # ends, under the console too (whose -i would keep the REPL after SystemExit),
        # and the host boots it again, as a board resets
        os.system(RESET_COMMAND)
    elif not repl:
        sys.exit(status or 0)


# The boot runs at module level, as a board's C code runs main.py: the relay's frames
# start this shallow (the unix port's stack limit is a board's, and every call counts).
if __name__ == "__main__":
    _flash.append(simflash.from_env())
    mount(_flash[0])
    sys.path.insert(0, MOUNT + "/lib")
    sys.path.insert(0, MOUNT)
    _uptime = simflash.host_env(ENV_UPTIME)
    if _uptime:
        from meta1lite import compat
        compat.set_uptime(int(_uptime))
    _status = 0
    try:
        if _exists(MAIN):
            exec(open(MAIN).read(), {"__name__": "__main__"})
        else:
            import main  # noqa: F401 - the frozen main.py boots on import
    except SystemExit as exc:
        _status = exc.value
    _finish(_status)
