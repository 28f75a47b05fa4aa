# boards/sim/main.py - main.py of the simulated Pico W (frozen into the sim firmware;
# scripts/flash also copies it to /flash/main.py, which boards/sim/simboot.py runs in
# its place, as a board runs /main.py before its frozen one). MicroPython only.
# Owns the board's boot in the same shape as boards/rpi-pico-w/main.py: the safe-mode
# escape (a file SAFE on the flash: the sim has no pins), the network (the host's
# loopback: nothing to bring up), the time (the host's clock: nothing to ask NTP), then
# the relay from /flash/meta1lite.conf with the console's commands (m1lboot).
# Must never: start the relay in safe mode, or mount or format the flash (simboot does).
import m1lboot

MOUNT = "/flash"


def main():
    if m1lboot.safe_mode(MOUNT, None):
        return 0
    print("main: network: the host's loopback; time: the host's clock")
    return m1lboot.run(MOUNT)


main()
