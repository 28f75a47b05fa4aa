# meta1lite.const - micropython.const() on both runtimes: compat's smallest half, with
# no imports of its own, so that the pure modules (cbor, the protocol cores, the DNS
# codec) can name their constants without importing compat.
# Owns: nothing but that name. Must never: import anything else.
# MicroPython's compiler folds `NAME = const(value)` into the code that uses NAME, and
# leaves a `_NAME = const(value)` out of the module's globals altogether (no entry in
# a board's heap). CPython runs const() as the identity.
try:
    from micropython import const
except ImportError:
    def const(value):
        """The value itself (CPython)."""
        return value
