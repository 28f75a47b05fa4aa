#!/usr/bin/env python3
# boards/openwrt/install.py - installs meta1lite's router layout into DESTDIR (the
# OpenWrt package's Package/install, and tests/test_openwrt_layout.py).
# Owns: the layout: the .mpy bundle under /usr/lib/micropython/meta1lite, the
# wrappers /usr/bin/meta1lite, /usr/sbin/sendmail, /usr/bin/mailq, the procd init
# script /etc/init.d/meta1lite, /etc/config/meta1lite (its settings) and
# /etc/meta1lite.conf (kept if present: a configuration file). Must never: write
# outside DESTDIR, or replace an existing /etc/meta1lite.conf.
import argparse
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
FILES = os.path.join(HERE, "files")
LIB = "usr/lib/micropython"
# (file under files/, path under DESTDIR, mode)
LAYOUT = (
    ("meta1lite", "usr/bin/meta1lite", 0o755),
    ("sendmail", "usr/sbin/sendmail", 0o755),
    ("mailq", "usr/bin/mailq", 0o755),
    ("meta1lite.init", "etc/init.d/meta1lite", 0o755),
    ("meta1lite.uci", "etc/config/meta1lite", 0o644),
)
CONFIG = ("meta1lite.conf", "etc/meta1lite.conf", 0o644)


def build_bundle(out):
    """The .mpy bundle (firmware/build_bundle.py: needs mpy-cross on the build host)."""
    subprocess.run([sys.executable, os.path.join(ROOT, "firmware", "build_bundle.py"), "--out", out],
                   check=True, stdout=subprocess.DEVNULL)
    return out


def install_file(src, destdir, rel, mode):
    dst = os.path.join(destdir, rel)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copyfile(os.path.join(FILES, src), dst)
    os.chmod(dst, mode)
    return dst


def install(destdir, bundle=None):
    """Install the layout into destdir; returns the paths written."""
    lib = os.path.join(destdir, LIB, "meta1lite")
    bundle = bundle or build_bundle(os.path.join(tempfile.mkdtemp(prefix="m1l-openwrt-"), "bundle"))
    shutil.rmtree(lib, ignore_errors=True)
    shutil.copytree(os.path.join(bundle, "meta1lite"), lib)
    written = [lib] + [install_file(src, destdir, rel, mode) for src, rel, mode in LAYOUT]
    if not os.path.exists(os.path.join(destdir, CONFIG[1])):
        written.append(install_file(*((CONFIG[0], destdir) + CONFIG[1:])))
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description="install meta1lite's OpenWrt layout into DESTDIR")
    parser.add_argument("--destdir", required=True, help="the root to install into")
    parser.add_argument("--bundle", help="a built .mpy bundle (default: build one)")
    args = parser.parse_args(argv)
    for path in install(args.destdir, args.bundle):
        print(path)


if __name__ == "__main__":
    main()
