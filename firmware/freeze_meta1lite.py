# Manifest fragment (MicroPython tools/manifestfile.py): freezes the meta1lite package,
# every module of meta1lite/ except meta1lite/cli/ (the CPython-only command line),
# as frozen bytecode with opt=3 (no asserts, no line numbers: smaller).
# Owns: which part of meta1lite goes into firmware. Used by firmware/manifest.py and
# every board manifest under boards/ (include("<path>/firmware/freeze_meta1lite.py")).
# Must never: include a port's or board's manifest (the including manifest does that).
# The manifest runner executes this file with the current directory set to firmware/.
# META1LITE_FREEZE_SRC: another folder holding a meta1lite/ to freeze (e.g. an older
# commit's tree, for before/after figures); default: this checkout.
import os

CPYTHON_ONLY = "cli"
base = os.environ.get("META1LITE_FREEZE_SRC") or ".."
pkg = os.path.join(base, "meta1lite")
shared = []
for folder, _dirs, names in os.walk(pkg):
    for name in names:
        rel = os.path.relpath(os.path.join(folder, name), pkg)
        if name.endswith(".py") and rel.split(os.sep)[0] != CPYTHON_ONLY:
            shared.append(rel)

package("meta1lite", files=sorted(shared), base_path=base, opt=3)  # noqa: F821
