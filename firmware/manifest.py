# Freeze manifest for a real MicroPython firmware build (see firmware/README.md):
#   make -C ports/rp2 BOARD=RPI_PICO_W FROZEN_MANIFEST=/path/to/meta1lite/firmware/manifest.py
# Keeps the board's own frozen modules (asyncio, its drivers and, on a networked
# board, micropython-lib's bundle-networking: ssl and ntptime, which the relay's TLS
# and a board's clock need; the port's generic manifest has neither) and adds every
# shared module of meta1lite as bytecode (freeze_meta1lite.py: meta1lite/cli/ left
# out). For a board with a folder in boards/, that folder's manifest also freezes
# its main.py. The manifest runner executes this file with the current directory
# set to firmware/.
include("$(BOARD_DIR)/manifest.py")  # noqa: F821 - provided by the manifest runner

include("freeze_meta1lite.py")  # noqa: F821 - meta1lite without cli/
