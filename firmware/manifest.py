# Freeze manifest for a real MicroPython firmware build (see firmware/README.md):
#   make -C ports/rp2 BOARD=RPI_PICO_W FROZEN_MANIFEST=/path/to/meta1lite/firmware/manifest.py
# Keeps the port's own frozen modules (asyncio, ...) and adds every shared module of
# meta1lite as bytecode (freeze_meta1lite.py: meta1lite/cli/ left out). The
# manifest runner executes this file with the current directory set to firmware/.
include("$(PORT_DIR)/boards/manifest.py")  # noqa: F821 - provided by the manifest runner

include("freeze_meta1lite.py")  # noqa: F821 - meta1lite without cli/
