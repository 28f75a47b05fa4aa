# Freeze manifest of a Raspberry Pi Pico W running meta1lite (rp2 port, board RPI_PICO_W):
#   make -C ports/rp2 BOARD=RPI_PICO_W FROZEN_MANIFEST=<repo>/boards/rpi-pico-w/manifest.py
# Owns: what this board's firmware freezes: the board's own manifest (the port's
# modules, asyncio, networking), meta1lite (firmware/freeze_meta1lite.py), the board's
# main.py and the common boot module. Must never: freeze meta1lite/cli/ or sim-only code.
# tests/test_firmware.py freezes it with tools/makemanifest.py (no pico-sdk needed).
include("$(BOARD_DIR)/manifest.py")  # noqa: F821 - provided by the manifest runner
include("../../firmware/freeze_meta1lite.py")  # noqa: F821
module("main.py")  # noqa: F821
module("m1lboot.py", base_path="../common")  # noqa: F821
