# Freeze manifest for a real MicroPython firmware build (see firmware/README.md):
#   make -C ports/rp2 BOARD=RPI_PICO_W FROZEN_MANIFEST=/path/to/meta1lite/firmware/manifest.py
# Keeps the port's own frozen modules (asyncio, ...) and adds every shared module of
# meta1lite as bytecode. meta1lite/cli/ (the CPython-only command line) is left out. The manifest runner
# executes this file with the current directory set to firmware/.
import os

include("$(PORT_DIR)/boards/manifest.py")  # noqa: F821 - provided by the manifest runner

CPYTHON_ONLY = "cli"
shared = []
for folder, _dirs, names in os.walk("../meta1lite"):
    for name in names:
        rel = os.path.relpath(os.path.join(folder, name), "../meta1lite")
        if name.endswith(".py") and rel.split(os.sep)[0] != CPYTHON_ONLY:
            shared.append(rel)

package("meta1lite", files=sorted(shared), base_path="..", opt=3)  # noqa: F821
