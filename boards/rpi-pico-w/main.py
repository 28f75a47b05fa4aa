# boards/rpi-pico-w/main.py - main.py of a Raspberry Pi Pico W running meta1lite
# (frozen into the firmware by boards/rpi-pico-w/manifest.py). MicroPython only.
# Owns the board's boot after rp2's _boot.py (which mounts VfsLfs2(bdev, progsize=256)
# at "/"): join the WLAN named in /wlan.conf (two lines: SSID, password), then run the
# relay from /meta1lite.conf (m1lboot). Must never: format the flash, or start the
# relay without a network (it would bind nothing useful; it retries instead).
import time

import m1lboot
import network

WLAN_CONF = "/wlan.conf"
WLAN_TIMEOUT_S = 30
RETRY_S = 10
MOUNT = ""                      # rp2 mounts its flash at "/": the config is /meta1lite.conf


def wlan_credentials():
    with open(WLAN_CONF) as f:
        lines = f.read().split("\n")
    return lines[0].strip(), lines[1].strip() if len(lines) > 1 else ""


def join_wlan():
    """Connect the station interface; True once it has an address."""
    ssid, password = wlan_credentials()
    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    wlan.connect(ssid, password)
    deadline = time.time() + WLAN_TIMEOUT_S
    while time.time() < deadline:
        if wlan.isconnected():
            print("main: wlan %s up, %s" % (ssid, wlan.ifconfig()[0]))
            return True
        time.sleep(1)
    return False


def main():
    while not join_wlan():
        print("main: wlan not up; retrying in %ds" % RETRY_S)
        time.sleep(RETRY_S)
    m1lboot.run(MOUNT)


main()
