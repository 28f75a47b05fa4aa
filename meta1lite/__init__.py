# meta1lite - a mail transfer agent for small machines, after the design of MeTA1.
# The package runs on MicroPython and CPython; see compat.py for the differences.
__version__ = "0.1.0"
