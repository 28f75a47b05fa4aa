# Freeze manifest of an ST NUCLEO-H743ZI running meta1lite (stm32 port, board NUCLEO_H743ZI):
#   make -C ports/stm32 BOARD=NUCLEO_H743ZI FROZEN_MANIFEST=<repo>/boards/nucleo-h743zi/manifest.py
# Owns: what this board's firmware freezes: the board's own manifest (asyncio and
# the port's drivers), meta1lite (firmware/freeze_meta1lite.py), the board's
# main.py and the common boot module. Must never: freeze meta1lite/cli/ or sim-only code.
# tests/test_firmware.py freezes it with tools/makemanifest.py (no STM32 HAL needed).
include("$(BOARD_DIR)/manifest.py")  # noqa: F821 - provided by the manifest runner
include("../../firmware/freeze_meta1lite.py")  # noqa: F821
module("main.py")  # noqa: F821
module("m1lboot.py", base_path="../common")  # noqa: F821
