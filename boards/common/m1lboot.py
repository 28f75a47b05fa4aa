# boards/common/m1lboot.py - starts meta1lite on a board (frozen into every board's
# firmware, next to the board's main.py; MicroPython only).
# Owns: running the relay from a configuration file on flash (the same path as
# `micropython -m meta1lite run -c FILE`: meta1lite.__main__.micro_main loads the
# configuration, drops the parser, runs mcp) and the heap figures printed at start
# and at exit (micropython.mem_info(): its "max free sz" is the largest free run of
# 16-byte blocks on a 32-bit board, what a TLS handshake's 16K record buffer needs).
# Must never: mount filesystems or bring up a network (main.py does), or hold relay
# logic of its own.
import gc

import micropython

CONF_NAME = "meta1lite.conf"


def heap_line(when):
    gc.collect()
    return "m1lboot: %s heap used=%d free=%d" % (when, gc.mem_alloc(), gc.mem_free())


def run(mount_point):
    """Run the relay with MOUNT_POINT/meta1lite.conf until it stops; its exit status."""
    print(heap_line("boot"))
    from meta1lite.__main__ import micro_main
    status = micro_main(["run", "-c", mount_point + "/" + CONF_NAME])
    print(heap_line("exit"))
    micropython.mem_info()
    return status
