#!/usr/bin/env python3
# Builds firmware with meta1lite frozen in, from a MicroPython v1.28.0 source tree.
#
#   python firmware/build_firmware.py --board sim          # the simulated Pico W (unix port, 32-bit)
#   python firmware/build_firmware.py --check-manifest rpi-pico-w   # freeze a real board's manifest
#
# Owns: finding the MicroPython source (MICROPY_DIR, else ../shared/micropython beside
# the repository), choosing the 32-bit compiler (gcc -m32 where multilib works, else
# the PyPI package ziglang), the make command lines, and the cache: a firmware is kept
# under firmware/build/sim/fw-<hash of its inputs>/ (the MicroPython tree's content,
# the variant files, the compiler, the make options, every manifest and every frozen
# source file), so an unchanged build returns in about a second.
# Must never: write into the MicroPython tree (it may be read-only: every BUILD= and
# the mpy-cross build are under firmware/build/), or need root. CPython-only.
import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD_ROOT = os.path.join(ROOT, "firmware", "build")
VARIANT_DIR = os.path.join(ROOT, "firmware", "variants", "sim")
DEFAULT_MICROPY_DIR = os.path.join(os.path.dirname(ROOT), "shared", "micropython")
MICROPY_TAG = "v1.28.0"
MICROPY_VERSION = (1, 28, 0)
FETCH_HINT = (
    "git clone --depth 1 --branch %s https://github.com/micropython/micropython.git && "
    "git -C micropython submodule update --init --depth 1 lib/mbedtls lib/micropython-lib"
    % MICROPY_TAG)
ZIG_TARGET = "x86-linux-musl"           # static: runs without a 32-bit libc installed
KEEP_FIRMWARES = 3              # fw-* folders kept (newest first); older ones are removed
KEEP_OBJECT_DIRS = 2            # obj-* folders (make's incremental state) kept
HASH_CHUNK = 1 << 16
CPYTHON_ONLY = "cli"            # meta1lite/cli/: never frozen (see freeze_meta1lite.py)

BOARDS = {
    # name: (port, board folder in the port, manifest, mpy-cross flags of the port)
    "sim": ("unix", None, "boards/sim/manifest.py", ""),
    "rpi-pico-w": ("rp2", "RPI_PICO_W", "boards/rpi-pico-w/manifest.py", "-march=armv6m"),
    "nucleo-h743zi": ("stm32", "NUCLEO_H743ZI", "boards/nucleo-h743zi/manifest.py",
                      "-march=armv7emdp"),
}


class Unavailable(Exception):
    """The build cannot run here: no MicroPython source or no 32-bit compiler."""


class BuildError(Exception):
    """make or the manifest tooling failed; the message holds the tail of its output."""


# --- inputs ---------------------------------------------------------------------------

def micropython_dir():
    """The MicroPython v1.28.0 source tree to build from, or Unavailable."""
    path = os.environ.get("MICROPY_DIR") or DEFAULT_MICROPY_DIR
    mpconfig = os.path.join(path, "py", "mpconfig.h")
    if not os.path.isfile(mpconfig):
        raise Unavailable("no MicroPython source at %s (set MICROPY_DIR, or fetch tag %s: %s)"
                          % (path, MICROPY_TAG, FETCH_HINT))
    version = source_version(mpconfig)
    if version != MICROPY_VERSION:
        raise Unavailable("MicroPython source at %s is %s, need %s (%s)"
                          % (path, ".".join(map(str, version)), MICROPY_TAG, FETCH_HINT))
    return os.path.abspath(path)


def source_version(mpconfig):
    found = {}
    with open(mpconfig) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[0] == "#define" and parts[1].startswith("MICROPY_VERSION_"):
                found[parts[1][len("MICROPY_VERSION_"):]] = parts[2]
    try:
        return tuple(int(found[k]) for k in ("MAJOR", "MINOR", "MICRO"))
    except (KeyError, ValueError):
        return (0, 0, 0)


def tree_hash(top, skip_dirs=(".git", "__pycache__")):
    """sha256 over every file's path and content under top (a 21 MB tree: ~0.3 s)."""
    h = hashlib.sha256()
    for folder, dirs, files in os.walk(top):
        dirs[:] = sorted(d for d in dirs if d not in skip_dirs and not d.startswith("build"))
        for name in sorted(files):
            path = os.path.join(folder, name)
            h.update(os.path.relpath(path, top).encode() + b"\0")
            file_into(h, path)
    return h.hexdigest()


def file_into(h, path):
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(HASH_CHUNK), b""):
            h.update(chunk)
    h.update(b"\0")


def files_hash(paths):
    h = hashlib.sha256()
    for path in sorted(set(paths)):
        h.update(path.encode() + b"\0")
        file_into(h, path)
    return h.hexdigest()


def manifest_inputs(mpy, board):
    """Every manifest file and every frozen source file of BOARD's manifest (paths)."""
    port, board_dir, manifest, _flags = BOARDS[board]
    sys.path.insert(0, os.path.join(mpy, "tools"))
    try:
        import manifestfile
    finally:
        sys.path.pop(0)
    m = manifestfile.ManifestFile(manifestfile.MODE_FREEZE, path_vars(mpy, port, board_dir))
    here = os.getcwd()
    try:
        m.execute(os.path.join(ROOT, manifest))
    except manifestfile.ManifestFileError as exc:
        raise BuildError("manifest %s: %s" % (manifest, exc))
    finally:
        os.chdir(here)
    return sorted(m._visited) + sorted(r.full_path for r in m.files())   # noqa: SLF001


def path_vars(mpy, port, board_dir):
    port_dir = os.path.join(mpy, "ports", port)
    return {"MPY_DIR": mpy, "MPY_LIB_DIR": os.path.join(mpy, "lib", "micropython-lib"),
            "PORT_DIR": port_dir,
            "BOARD_DIR": os.path.join(port_dir, "boards", board_dir) if board_dir else ""}


def meta1lite_modules():
    """Paths (relative to meta1lite/) of the modules freeze_meta1lite.py freezes: every
    .py but meta1lite/cli/, from META1LITE_FREEZE_SRC/meta1lite when that is set."""
    pkg = os.path.join(os.environ.get("META1LITE_FREEZE_SRC") or ROOT, "meta1lite")
    found = []
    for folder, _dirs, names in os.walk(pkg):
        for name in names:
            rel = os.path.relpath(os.path.join(folder, name), pkg)
            if name.endswith(".py") and rel.split(os.sep)[0] != CPYTHON_ONLY:
                found.append(rel.replace(os.sep, "/"))
    return sorted(found)


# --- compiler -----------------------------------------------------------------------------

def choose_compiler(wanted="auto"):
    """('gcc', id, make vars) or ('zig', id, make vars) for a 32-bit x86 build."""
    if wanted in ("auto", "gcc") and gcc_m32_works():
        version = first_line(["gcc", "--version"])
        return "gcc", "gcc -m32 " + version, ["MICROPY_FORCE_32BIT=1"]
    if wanted in ("auto", "zig"):
        zig = zig_path()
        if zig:
            cc = "%s cc -target %s" % (zig, ZIG_TARGET)
            ident = "zig %s -target %s" % (first_line([zig, "version"]), ZIG_TARGET)
            return "zig", ident, ["CC=" + cc, "LD=" + cc, "CPP=gcc -E",
                                  "CFLAGS_EXTRA=-DMICROPY_GCREGS_SETJMP=1",
                                  "LDFLAGS_ARCH=-Wl,--gc-sections", "STRIP=true", "SIZE=true"]
    raise Unavailable("no 32-bit C compiler: gcc -m32 does not link (no gcc-multilib) and the "
                      "PyPI package ziglang is not installed (pip install ziglang)")


def first_line(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return out.strip().splitlines()[0]


def gcc_m32_works():
    if not shutil.which("gcc"):
        return False
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "t.c")
        with open(src, "w") as f:
            f.write("int main(void) { return sizeof(void *) == 4 ? 0 : 1; }\n")
        proc = subprocess.run(["gcc", "-m32", src, "-o", os.path.join(tmp, "t")],
                              capture_output=True)
        return proc.returncode == 0


def zig_path():
    try:
        import ziglang
    except ImportError:
        return None
    path = os.path.join(os.path.dirname(ziglang.__file__), "zig")
    return path if os.access(path, os.X_OK) else None


# --- building -------------------------------------------------------------------------------

def run_make(args, env=None, what="make"):
    proc = subprocess.run(["make"] + args, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-6000:]
        raise BuildError("%s failed (exit %d):\n%s" % (what, proc.returncode, tail))
    return proc


def build_mpy_cross(mpy, tree):
    """mpy-cross for the host (its output is portable bytecode), cached by the tree hash."""
    out = os.path.join(BUILD_ROOT, "mpy-cross", tree[:16])
    exe = os.path.join(out, "mpy-cross")
    if not os.path.exists(exe):
        run_make(["-C", os.path.join(mpy, "mpy-cross"), "BUILD=" + out, "-j%d" % jobs()],
                 what="make mpy-cross")
    return exe


def jobs():
    return max(1, os.cpu_count() or 1)


def sim_make_args(mpy, obj, mpy_cross, compiler_vars):
    return ["-C", os.path.join(mpy, "ports", "unix"), "VARIANT_DIR=" + VARIANT_DIR,
            "BUILD=" + obj, "FROZEN_MANIFEST=" + os.path.join(ROOT, BOARDS["sim"][2]),
            "MICROPY_MPYCROSS=" + mpy_cross] + compiler_vars


def build_sim(compiler="auto", force=False, log=print):
    """Build (or take from the cache) the sim firmware; returns its info dict:
    path, key, compiler, seconds, cached, size, obj_dir."""
    mpy = micropython_dir()
    kind, ident, compiler_vars = choose_compiler(compiler)
    os.makedirs(BUILD_ROOT, exist_ok=True)
    with open(os.path.join(BUILD_ROOT, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)        # one build at a time in this checkout
        return _build_sim_locked(mpy, kind, ident, compiler_vars, force, log)


def _build_sim_locked(mpy, kind, ident, compiler_vars, force, log):
    started = time.time()
    tree = tree_hash(mpy)
    variant = files_hash(os.path.join(VARIANT_DIR, n) for n in os.listdir(VARIANT_DIR))
    obj_key = hashlib.sha256("\n".join([tree, variant, ident] + compiler_vars).encode()).hexdigest()
    frozen = files_hash(manifest_inputs(mpy, "sim"))
    key = hashlib.sha256((obj_key + frozen).encode()).hexdigest()
    sim_root = os.path.join(BUILD_ROOT, "sim")
    fw_dir = os.path.join(sim_root, "fw-" + key[:16])
    info_path = os.path.join(fw_dir, "info.json")
    info = _cached(info_path) if not force else None
    if info is not None:
        info.update(cached=True, seconds=round(time.time() - started, 2))
        touch(fw_dir)
        return info
    obj = os.path.join(sim_root, "obj-" + obj_key[:16])
    log("building the sim firmware (%s) in %s" % (ident, obj))
    mpy_cross = build_mpy_cross(mpy, tree)
    env = dict(os.environ, MICROPY_MPYCROSS=mpy_cross)
    # makemanifest reuses a cached .mpy when it is newer than its source: a source
    # swapped for an older file (another commit, META1LITE_FREEZE_SRC) would be missed
    shutil.rmtree(os.path.join(obj, "frozen_mpy"), ignore_errors=True)
    run_make(sim_make_args(mpy, obj, mpy_cross, compiler_vars) + ["-j%d" % jobs()], env=env,
             what="make -C ports/unix (sim)")
    info = install(os.path.join(obj, "micropython"), fw_dir, key, kind, ident, obj)
    info.update(seconds=round(time.time() - started, 1))
    with open(info_path, "w") as f:
        json.dump(dict(info, cached=False), f, indent=1)
    prune(sim_root, "fw-", KEEP_FIRMWARES)
    prune(sim_root, "obj-", KEEP_OBJECT_DIRS, keep=obj)
    return dict(info, cached=False)


def _cached(info_path):
    # a cached firmware's info, or None; one whose object folder was pruned since
    # (KEEP_OBJECT_DIRS < KEEP_FIRMWARES) is built again: check_manifest needs its genhdr/
    if not os.path.exists(info_path):
        return None
    with open(info_path) as f:
        info = json.load(f)
    return info if os.path.isdir(os.path.join(info["obj_dir"], "genhdr")) else None


def install(binary, fw_dir, key, kind, ident, obj):
    if not is_elf32_x86(binary):
        raise BuildError("%s is not a 32-bit x86 ELF executable" % binary)
    tmp = fw_dir + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    exe = os.path.join(tmp, "micropython")
    shutil.copy2(binary, exe)
    if shutil.which("strip"):
        subprocess.run(["strip", exe], capture_output=True)
    shutil.rmtree(fw_dir, ignore_errors=True)
    os.rename(tmp, fw_dir)
    exe = os.path.join(fw_dir, "micropython")
    return {"path": exe, "key": key, "compiler": kind, "compiler_id": ident, "obj_dir": obj,
            "size": os.path.getsize(exe), "frozen_bytes": frozen_size(obj)}


def frozen_size(obj):
    """Bytes of frozen_content.c's object file in flash terms (text + data), if known."""
    path = os.path.join(obj, "frozen_content.o")
    if not os.path.exists(path) or not shutil.which("size"):
        return None
    out = subprocess.run(["size", path], capture_output=True, text=True).stdout.split("\n")
    fields = out[1].split() if len(out) > 1 else []
    return int(fields[0]) + int(fields[1]) if len(fields) > 2 else None


def is_elf32_x86(path):
    """True for an ELFCLASS32, EM_386 executable."""
    with open(path, "rb") as f:
        head = f.read(20)
    return head[:4] == b"\x7fELF" and head[4] == 1 and int.from_bytes(head[18:20], "little") == 3


def touch(path):
    os.utime(path, None)


def prune(folder, prefix, keep_count, keep=None):
    found = [os.path.join(folder, d) for d in os.listdir(folder) if d.startswith(prefix)
             and not d.endswith(".tmp")]
    found.sort(key=os.path.getmtime, reverse=True)
    for path in found[keep_count:]:
        if path != keep:
            shutil.rmtree(path, ignore_errors=True)


# --- real boards: the manifest, frozen without the board's SDK -----------------------------

def check_manifest(board, sim_info=None, manifest=None):
    """Run tools/makemanifest.py over BOARD's manifest, or `manifest` (a path in the
    repository) with BOARD's port and board folder (needs the genhdr/ of the sim
    build); returns the path of the frozen_content.c it wrote."""
    port, board_dir, own_manifest, flags = BOARDS[board]
    manifest = manifest or own_manifest
    mpy = micropython_dir()
    sim_info = sim_info or build_sim(log=lambda *_: None)
    out = os.path.join(BUILD_ROOT, "manifest-check", board)
    shutil.rmtree(os.path.join(out, "genhdr"), ignore_errors=True)
    os.makedirs(out, exist_ok=True)
    shutil.copytree(os.path.join(sim_info["obj_dir"], "genhdr"), os.path.join(out, "genhdr"))
    mpy_cross = build_mpy_cross(mpy, tree_hash(mpy))
    frozen_c = os.path.join(out, "frozen_content.c")
    cmd = [sys.executable, os.path.join(mpy, "tools", "makemanifest.py"), "-o", frozen_c]
    for name, value in path_vars(mpy, port, board_dir).items():
        cmd += ["-v", "%s=%s" % (name, value)]
    cmd += ["-b", out] + (["--mpy-cross-flags=" + flags] if flags else []) + [os.path.join(ROOT, manifest)]
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          env=dict(os.environ, MICROPY_MPYCROSS=mpy_cross))
    if proc.returncode != 0 or not os.path.exists(frozen_c):
        raise BuildError("makemanifest.py failed for %s (exit %d):\n%s"
                         % (board, proc.returncode, (proc.stdout + proc.stderr)[-6000:]))
    return frozen_c


def frozen_modules(frozen_c):
    """Names of the modules a frozen_content.c holds (from its mp_frozen_names)."""
    with open(frozen_c) as f:
        text = f.read()
    start = text.find("mp_frozen_names[]")
    body = text[start:text.find("};", start)]
    names = [line.split('"')[1] for line in body.split("\n") if '"' in line]
    return [n[:-len("\\0")] for n in names if n.endswith(".py\\0")]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--board", default="sim", choices=["sim"])
    parser.add_argument("--compiler", default="auto", choices=["auto", "gcc", "zig"])
    parser.add_argument("--force", action="store_true", help="rebuild even when cached")
    parser.add_argument("--check-manifest", metavar="BOARD", choices=sorted(BOARDS),
                        help="freeze BOARD's manifest with tools/makemanifest.py")
    args = parser.parse_args(argv)
    try:
        info = build_sim(args.compiler, args.force)
        print("firmware: %(path)s (%(compiler_id)s)" % info)
        print("size: %d bytes stripped; frozen content %s bytes; %s in %.1f s"
              % (info["size"], info["frozen_bytes"], "cached" if info["cached"] else "built",
                 info["seconds"]))
        if args.check_manifest:
            frozen_c = check_manifest(args.check_manifest, info)
            print("manifest %s: ok, %d frozen modules (%s)"
                  % (args.check_manifest, len(frozen_modules(frozen_c)), frozen_c))
    except Unavailable as exc:
        sys.stderr.write("build_firmware: cannot build here: %s\n" % exc)
        return 2
    except BuildError as exc:
        sys.stderr.write("build_firmware: %s\n" % exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
