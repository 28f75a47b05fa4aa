# Runs the shared-code unit tests (tests/core/test_*.py) under the MicroPython unix
# port. Owns: calling each test_* function and printing PASS/FAIL lines. Must never
# import pytest or anything CPython-only: it runs inside `micropython`.
import sys


def _print_exception(exc):
    if hasattr(sys, "print_exception"):
        sys.print_exception(exc)
    else:
        import traceback
        traceback.print_exception(type(exc), exc, exc.__traceback__)


def _tests_of(module, only):
    if only:
        return [only]
    return sorted(name for name in dir(module) if name.startswith("test_"))


def run(spec):
    """Run 'module' or 'module:function'; return (passed, failed)."""
    name, _, only = spec.partition(":")
    module = __import__(name)
    passed = failed = 0
    for test in _tests_of(module, only):
        try:
            getattr(module, test)()
        except Exception as exc:  # noqa: BLE001 - report every failure
            failed += 1
            print("FAIL %s:%s" % (name, test))
            _print_exception(exc)
        else:
            passed += 1
            print("PASS %s:%s" % (name, test))
    return passed, failed


def main(argv):
    passed = failed = 0
    for spec in argv:
        p, f = run(spec)
        passed += p
        failed += f
    print("upy: %d passed, %d failed" % (passed, failed))
    return 1 if failed or not passed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
