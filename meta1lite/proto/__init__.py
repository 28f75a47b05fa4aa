# meta1lite.proto - sans-I/O protocol cores (SMTP server and client, addresses,
# replies, DNS): bytes in, events and bytes out. Must never touch sockets, files,
# clocks or configuration objects. Runs on MicroPython and CPython.
