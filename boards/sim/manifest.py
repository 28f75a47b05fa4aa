# Freeze manifest of the simulated Pico W (the MicroPython unix port, 32-bit, variant
# firmware/variants/sim), built by `python firmware/build_firmware.py --board sim`.
# Owns: what the sim firmware freezes: the unix port's standard manifest (asyncio,
# ssl, ...), meta1lite (firmware/freeze_meta1lite.py), the board's boot (simboot.py) and
# main.py, its flash driver and the common boot module. Must never: freeze
# meta1lite/cli/ or test code.
# The manifest runner executes this file with the current directory set to boards/sim/.
include("$(PORT_DIR)/variants/standard/manifest.py")  # noqa: F821 - manifest runner
include("../../firmware/freeze_meta1lite.py")  # noqa: F821
module("main.py")  # noqa: F821
module("simflash.py")  # noqa: F821
module("simboot.py")  # noqa: F821
module("m1lboot.py", base_path="../common")  # noqa: F821
