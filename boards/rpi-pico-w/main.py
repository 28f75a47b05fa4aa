# boards/rpi-pico-w/main.py - main.py of a Raspberry Pi Pico W running meta1lite
# (frozen into the firmware by boards/rpi-pico-w/manifest.py; scripts/flash also
# copies it to /main.py, which rp2 runs before the frozen one). MicroPython only.
# Owns the board's boot after rp2's _boot.py (which mounts VfsLfs2(bdev, progsize=256)
# at "/"): the safe-mode escape (GP15 held to GND at reset, or a file /SAFE), joining
# the WLAN named in /wlan.conf (two lines: SSID, password) with retries, and again
# whenever it drops while the relay runs, the time from NTP, then the relay from
# /meta1lite.conf (m1lboot).
# Must never: format the flash, start the relay in safe mode, or start it without a
# network (it would bind nothing useful; it retries instead).
import time

import m1lboot
import network

WLAN_CONF = "/wlan.conf"
WLAN_TIMEOUT_S = 30
RETRY_S = 10
SAFE_PIN = 15                   # GP15 (physical pin 20) to GND (pin 18) at reset
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


def keep_wlan():
    """Every m1lboot.LINK_CHECK_S while the relay runs: a WLAN that dropped (the
    access point rebooted, a long outage) is joined again; the cyw43 driver does not
    rejoin by itself, and a board left alone for years outlives many router reboots.
    connect() returns at once: the next check sees whether it worked."""
    wlan = network.WLAN(network.STA_IF)
    if wlan.isconnected():
        return
    ssid, password = wlan_credentials()
    print("main: wlan %s down (status %s); joining again" % (ssid, wlan.status()))
    wlan.active(True)
    wlan.connect(ssid, password)


def main():
    if m1lboot.safe_mode(MOUNT, SAFE_PIN):
        return 0
    m1lboot.retry(join_wlan, "wlan", RETRY_S)
    m1lboot.set_time(RETRY_S)
    return m1lboot.run(MOUNT, keep_wlan)


main()
