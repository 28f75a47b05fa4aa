# meta1lite.cli.host - what the command-line tools need to know about the machine,
# the same on both runtimes: the user's id and login name, and a blocking client
# socket to the daemon's control endpoint (TCP or a unix socket path).
# Owns: those runtime differences for the tools only (the daemon never imports this
# module; compat.py holds the daemon's). Must never: block without a timeout.
import os

from meta1lite.compat import MICROPYTHON


def getuid():
    """The real user id (the unix port reads /proc/self/status); 0 where unknown."""
    if hasattr(os, "getuid"):
        return os.getuid()
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Uid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


USER_ENV = ("LOGNAME", "USER", "LNAME", "USERNAME")    # getpass.getuser()'s order


def username():
    """The login name, as getpass.getuser() finds it (environment, then
    /etc/passwd by uid), the same on both runtimes; "root" if nothing says."""
    for name in USER_ENV:
        value = os.getenv(name)
        if value:
            return value
    uid = b"%d" % getuid()
    try:
        with open("/etc/passwd", "rb") as f:
            for line in f:
                fields = line.split(b":")
                if len(fields) > 2 and fields[2] == uid:
                    return fields[0].decode()
    except (OSError, UnicodeError):
        pass
    return "root"


def connect_blocking(endpoint, timeout_s):
    """A blocking client socket to a (host, port) or a unix socket path (the
    queue tools' side of the control channel); raises OSError."""
    import socket
    if isinstance(endpoint, (tuple, list)):
        family, _, _, _, addr = socket.getaddrinfo(endpoint[0], endpoint[1], 0,
                                                   socket.SOCK_STREAM)[0]
    else:
        family = socket.AF_UNIX
        addr = endpoint if not MICROPYTHON else _sockaddr_un(endpoint)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout_s)
        sock.connect(addr)
    except BaseException:
        sock.close()
        raise
    return sock


def _sockaddr_un(path):
    # MicroPython takes a raw struct sockaddr_un (Linux: sa_family in host order)
    import socket
    import struct
    return struct.pack("H108s", socket.AF_UNIX, path.encode())
