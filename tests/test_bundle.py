# The .mpy bundle and the freeze manifest (issue: foundation, item 8). CPython-only
# driver; the bundle itself is imported under the real micropython binary.
import os
import subprocess
import sys

from helpers.upy import ROOT, find_micropython, run_micropython

BUILD = os.path.join(ROOT, "firmware", "build_bundle.py")


def build_bundle(tmp_path):
    out = tmp_path / "bundle"
    proc = subprocess.run([sys.executable, BUILD, "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, proc.stdout


def test_bundle_builds_every_shared_module_and_prints_sizes(tmp_path):
    out, table = build_bundle(tmp_path)
    sources = []
    for folder, _dirs, names in os.walk(os.path.join(ROOT, "meta1lite")):
        for name in names:
            rel = os.path.relpath(os.path.join(folder, name), ROOT)
            if name.endswith(".py") and not rel.endswith(os.path.join("cli", "passwd.py")):
                sources.append(rel)
    for rel in sources:
        assert (out / (rel[:-3] + ".mpy")).is_file(), rel
        assert rel in table
    assert (out / "meta1lite" / "cli" / "sendmail.mpy").is_file()     # the router's command line
    assert "total (%d modules)" % len(sources) in table


def test_every_bundled_module_imports_under_micropython(tmp_path):
    out, _ = build_bundle(tmp_path)
    modules = []
    for folder, _dirs, names in os.walk(out):
        for name in names:
            if name.endswith(".mpy") and name != "__main__.mpy":
                rel = os.path.relpath(os.path.join(folder, name), out)[:-4]
                modules.append(rel.replace(os.sep, ".").replace(".__init__", ""))
    script = "import sys\nsys.path.remove('%s')\nfor m in %r:\n    __import__(m)\n" \
             "    assert sys.modules[m].__file__.endswith('.mpy'), m\nprint('ok', len(%r))\n" \
             % (ROOT, sorted(modules), modules)
    if find_micropython():
        proc = run_micropython(["-c", script], heap="1M", paths=(str(out),), cwd=str(tmp_path))
        assert proc.returncode == 0 and b"ok" in proc.stdout, proc.stdout + proc.stderr
    else:
        run_micropython(["-c", "pass"])  # fails in CI, skips elsewhere


def test_freeze_manifest_lists_shared_modules_only():
    calls = {"include": []}

    def include(path):
        calls["include"].append(path)
        if not path.startswith("$("):                 # ours: run it, as the runner does
            exec(open(path).read(), env)

    env = {"include": include,
           "package": lambda name, files=None, base_path=".", opt=None:
               calls.update(package=(name, files, base_path, opt))}
    here = os.getcwd()
    os.chdir(os.path.join(ROOT, "firmware"))
    try:
        exec(open("manifest.py").read(), env)
    finally:
        os.chdir(here)
    name, files, base, _opt = calls["package"]
    assert name == "meta1lite" and os.path.normpath(os.path.join(ROOT, "firmware", base)) == ROOT
    assert "compat.py" in files and "__init__.py" in files
    assert not [f for f in files if f.startswith("cli")]
    assert calls["include"] == ["$(BOARD_DIR)/manifest.py", "freeze_meta1lite.py"]
