# boards/nucleo-h743zi/main.py - main.py of an ST NUCLEO-H743ZI running meta1lite
# (frozen into the firmware by boards/nucleo-h743zi/manifest.py; scripts/flash also
# copies it to /flash/main.py, which stm32 runs before the frozen one). MicroPython only.
# Owns the board's boot after the stm32 port's own (which mounts the internal flash
# at /flash): the safe-mode escape (the blue USER button B1 held at reset, or a file
# /flash/SAFE), Ethernet with DHCP with retries, the time from NTP, then the relay
# from /flash/meta1lite.conf (m1lboot).
# Must never: format the flash, or start the relay in safe mode.
import time

import m1lboot
import network

LAN_TIMEOUT_S = 30
RETRY_S = 10
SAFE_PIN = "C13"                # B1 USER (blue): reads 1 while pressed
SAFE_ACTIVE = 1
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
    if m1lboot.safe_mode(MOUNT, SAFE_PIN, SAFE_ACTIVE):
        return 0
    m1lboot.retry(join_lan, "lan", RETRY_S)
    m1lboot.set_time(RETRY_S)
    return m1lboot.run(MOUNT)


main()
