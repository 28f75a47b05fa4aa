# Firmware with meta1lite frozen in (issue 8, Build 1): the sim firmware (the MicroPython
# unix port, 32-bit, variant firmware/variants/sim) builds and is cached, the whole relay
# imports from flash-resident frozen bytecode at a board's heap and the import cost is
# printed; the real boards' manifests (rp2 RPI_PICO_W, stm32 NUCLEO_H743ZI) freeze with
# MicroPython's tools/makemanifest.py; the sim's flash driver allocates nothing and its
# power cut tears a write and kills the board. CPython-only (the driver side).
# Without a compiler or the MicroPython source these skip with one reason (fail in CI).
import os
import subprocess
import sys

import pytest
from helpers import board
from helpers.board import SimBoard, build_firmware, firmware, load_profile, sim_config
from helpers.upy import ROOT

IMPORT_HEAP_MAX = 64 * 1024     # issue 8 measured ~43K; a board has 192K for everything
REAL_BOARDS = ("rpi-pico-w", "nucleo-h743zi")


def shared_module_names():
    names = []
    for rel in build_firmware.meta1lite_modules():
        name = "meta1lite." + rel[:-3].replace("/", ".")
        names.append(name[:-len(".__init__")] if name.endswith(".__init__") else name)
    return names


def run_on_board(tmp_path, code, heap=None):
    heap = heap or load_profile()["heap_bytes"]
    cmd = [firmware()["path"], "-X", "heapsize=%d" % heap, "-c", code]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROPY")}
    env["MICROPYPATH"] = ".frozen"
    return subprocess.run(cmd, env=env, cwd=str(tmp_path), capture_output=True, text=True,
                          timeout=120)


def test_missing_source_names_the_tag_and_how_to_fetch_it(tmp_path):
    env = dict(os.environ, MICROPY_DIR=str(tmp_path / "nowhere"))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "firmware", "build_firmware.py"),
                           "--board", "sim"], env=env, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "v1.28.0" in proc.stderr and "git clone" in proc.stderr, proc.stderr


def test_sim_firmware_is_32_bit_and_cached():
    info = firmware()
    assert build_firmware.is_elf32_x86(info["path"])
    again = build_firmware.build_sim(log=lambda *_: None)
    assert again["cached"] and again["path"] == info["path"]
    print("\nsim firmware: %s, %d bytes stripped, frozen content %s bytes, %s in %.1f s; "
          "cached rebuild %.2f s" % (info["compiler_id"], info["size"], info["frozen_bytes"],
                                     "cached" if info["cached"] else "built", info["seconds"],
                                     again["seconds"]))


def test_frozen_relay_imports_within_a_board_heap(tmp_path):
    modules = shared_module_names()
    code = """
import gc, sys
gc.collect()
base = gc.mem_alloc()
for name in %r:
    __import__(name)
gc.collect()
print("bits", 32 if sys.maxsize == 2147483647 else 64)
print("frozen", sys.modules["meta1lite.mcp"].__file__)
print("heap", gc.mem_alloc() - base, gc.mem_free())
""" % (modules,)
    proc = run_on_board(tmp_path, code)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    assert out["bits"] == "32"
    assert out["frozen"] == "meta1lite/mcp.py" and not (tmp_path / "meta1lite").exists()
    used, free = (int(x) for x in out["heap"].split())
    print("\nimporting the whole relay (%d modules, frozen): %d bytes of heap, %d free of %d"
          % (len(modules), used, free, load_profile()["heap_bytes"]))
    assert used <= IMPORT_HEAP_MAX


@pytest.mark.parametrize("name", REAL_BOARDS)
@pytest.mark.parametrize("manifest", [None, "firmware/manifest.py"])
def test_real_board_manifest_freezes(name, manifest):
    # the board's own manifest, and the generic one a board without a folder uses
    try:
        frozen_c = build_firmware.check_manifest(name, firmware(), manifest)
    except build_firmware.Unavailable as exc:
        board.unavailable(str(exc))
    frozen = build_firmware.frozen_modules(frozen_c)
    wanted = ["meta1lite/" + rel for rel in build_firmware.meta1lite_modules()]
    assert not [m for m in wanted if m not in frozen], "missing from %s" % name
    assert "asyncio/core.py" in frozen
    # TLS (tls.py imports ssl, micropython-lib's) and the board's clock (ntptime)
    assert "ssl.py" in frozen and "ntptime.py" in frozen
    if manifest is None:
        assert "main.py" in frozen and "m1lboot.py" in frozen
    assert not [m for m in frozen if m.startswith("meta1lite/cli")]
    print("\n%s (%s): %d frozen modules" % (name, manifest or "its own manifest", len(frozen)))


def test_shipped_sim_config_fits_the_socket_budget(tmp_path):
    from meta1lite import conf
    path = tmp_path / "meta1lite.conf"
    path.write_text(sim_config(2525, 'route "*" { via = "[127.0.0.1]:2526"; }'))
    cfg = conf.load(str(path))
    sockets = (len(cfg["smtps"]["listen"]) + len(cfg["smtps"]["listen_tls"])
               + cfg["smtps"]["max_connections"] + cfg["smtpc"]["max_connections"]
               + (1 if isinstance(cfg["control"], (tuple, list)) else 0))
    assert sockets <= load_profile()["tcp_sockets"]
    assert cfg["spool"] == "/flash/spool"


SIMFLASH_NO_ALLOC = """
import micropython, simflash
f = open("img", "wb"); f.write(b"\\xff" * 4 * 4096); f.close()
flash = simflash.FileFlash("img", 4096, 4, 256)
page = bytearray(b"\\xa5" * 256)
block = bytearray(4096)
n = 0
micropython.heap_lock()
while n < 50:                   # no range(): that would allocate
    flash.ioctl(6, 1)
    flash.writeblocks(1, page, 256)
    flash.readblocks(1, block, 0)
    flash.ioctl(4, 0)
    n += 1
micropython.heap_unlock()
print("data", block[255], block[256], block[511], block[512])
print("counters", flash.counters())
"""


def test_simflash_allocates_nothing_and_counts(tmp_path):
    proc = run_on_board(tmp_path, SIMFLASH_NO_ALLOC)
    assert proc.returncode == 0, proc.stdout + proc.stderr     # heap locked: no allocation
    assert "data 255 165 165 255" in proc.stdout
    assert "counters (50, 50, 50, 12800)" in proc.stdout


SIMFLASH_CUT = """
import simflash
f = open("img", "wb"); f.write(b"\\xff" * 4 * 4096); f.close()
flash = simflash.FileFlash("img", 4096, 4, 256, cut_after=3)
page = bytearray(b"\\x00" * 256)
flash.writeblocks(0, page, 0)
flash.ioctl(6, 1)
print("before the cut")
flash.writeblocks(2, page, 0)
print("survived the power cut")
"""


def test_simflash_power_cut_tears_the_write_and_kills(tmp_path):
    proc = run_on_board(tmp_path, SIMFLASH_CUT)
    assert proc.returncode == -9, proc.stdout + proc.stderr
    assert "before the cut" in proc.stdout and "survived" not in proc.stdout
    image = (tmp_path / "img").read_bytes()
    torn = image[2 * 4096:2 * 4096 + 256]
    assert torn[:128] == b"\x00" * 128 and torn[128:] == b"\xff" * 128
    assert SimBoard.counters_of(str(tmp_path / "img"))["programs"] == 1


def test_sim_board_formats_and_mounts_its_flash(tmp_path):
    sim = SimBoard(tmp_path)
    sim.create_flash("hostname = \"x.test\";\n")
    flash = sim.profile["flash"]
    assert os.path.getsize(sim.image) == flash["block_size"] * flash["block_count"]
    proc = sim.run_tool("import simboot, simflash, vfs, os\n"
                        "f = simflash.from_env(); simboot.mount(f)\n"
                        "st = os.statvfs('/flash')\n"
                        "print('fs', st[0], st[2], open('/flash/meta1lite.conf').read())")
    assert "fs %d %d hostname" % (flash["block_size"], flash["block_count"]) in proc.stdout


def test_a_cached_firmware_whose_object_folder_was_pruned_is_built_again(tmp_path):
    """check_manifest copies genhdr/ from the sim build's object folder; a cached
    firmware outlives its object folder (fewer are kept), and then it is not taken
    from the cache (the manifest check failed with FileNotFoundError)."""
    import json
    obj = tmp_path / "obj-1"
    (obj / "genhdr").mkdir(parents=True)
    info_path = tmp_path / "info.json"
    info_path.write_text(json.dumps({"path": "micropython", "obj_dir": str(obj)}))
    assert build_firmware._cached(str(info_path))["obj_dir"] == str(obj)
    (obj / "genhdr").rmdir()
    assert build_firmware._cached(str(info_path)) is None
    assert build_firmware._cached(str(tmp_path / "none.json")) is None
