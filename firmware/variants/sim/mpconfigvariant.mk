# Variant "sim" of the MicroPython unix port (see mpconfigvariant.h). Owns the make
# options of the simulated board's firmware; the frozen manifest is given on the
# command line by firmware/build_firmware.py (boards/sim/manifest.py).
# No libffi and no berkeley-db: neither exists on a board (nor in the trimmed source).
MICROPY_PY_FFI = 0
MICROPY_PY_BTREE = 0
# No _thread: a Pico W's second core is not the relay's, and without threads nothing
# makes the SIGINT handler raise out of C code (mpconfigvariant.h).
MICROPY_PY_THREAD = 0
