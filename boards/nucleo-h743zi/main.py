# boards/nucleo-h743zi/main.py - main.py of an ST NUCLEO-H743ZI running meta1lite
# (frozen into the firmware by boards/nucleo-h743zi/manifest.py). MicroPython only.
# Owns the board's boot after the stm32 port's own (which mounts the internal flash
# at /flash): bring up Ethernet with DHCP, then run the relay from
# /flash/meta1lite.conf (m1lboot). Must never: format the flash.
import time

import m1lboot
import network

LAN_TIMEOUT_S = 30
RETRY_S = 10
MOUNT = "/flash"


def join_lan():
    """Bring up the Ethernet interface; True once DHCP gave it an address."""
    lan = network.LAN()
    lan.active(True)
    deadline = time.time() + LAN_TIMEOUT_S
    while time.time() < deadline:
        if lan.isconnected() and lan.ifconfig()[0] != "0.0.0.0":
            print("main: lan up, %s" % lan.ifconfig()[0])
            return True
        time.sleep(1)
    return False


def main():
    while not join_lan():
        print("main: lan not up; retrying in %ds" % RETRY_S)
        time.sleep(RETRY_S)
    m1lboot.run(MOUNT)


main()
