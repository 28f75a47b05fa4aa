# meta1lite.cli.channel - the queue tools' side of the daemon's control channel
# (meta1lite/qmgr/control.py), on both runtimes.
# Owns: one request (a line, optionally followed by a payload of bytes) and its
# one-line JSON reply; DaemonDown when nobody answers. Must never: retry a request
# (an inject must not be sent twice), or wait longer than _REPLY_TIMEOUT_S.
import json

from meta1lite.cli import host
from meta1lite.const import const

CONNECT_TIMEOUT_S = const(5)
_REPLY_TIMEOUT_S = const(60)    # an inject waits for the daemon's sync
MAX_REPLY = const(1 << 20)
_RECV_CHUNK = const(4096)


class DaemonDown(Exception):
    """Nobody answers on the control channel. .sent: the request went out (the
    daemon may have acted on it) before the reply failed."""

    def __init__(self, text, sent=False):
        super().__init__(text)
        self.sent = sent


def _reply(sock):
    data = b""
    while not data.endswith(b"\n") and len(data) < MAX_REPLY:
        more = sock.recv(_RECV_CHUNK)
        if not more:
            break
        data += more
    return data


def request(cfg, line, payload=()):
    """Send one request (and the byte strings of payload) to the running daemon;
    its reply (dict). Raises DaemonDown if nobody answers or the reply is cut."""
    try:
        sock = host.connect_blocking(cfg["control"], CONNECT_TIMEOUT_S)
    except OSError as exc:
        raise DaemonDown(str(exc))
    sent = False
    try:
        sock.settimeout(_REPLY_TIMEOUT_S)
        sock.sendall(line.encode() + b"\n")
        for part in payload:
            sock.sendall(part)
        sent = True
        data = _reply(sock)
    except OSError as exc:
        raise DaemonDown(str(exc), sent)
    finally:
        sock.close()
    if not data.endswith(b"\n"):
        raise DaemonDown("no reply", sent)
    try:
        return json.loads(data.decode("utf-8", "replace"))
    except ValueError:
        raise DaemonDown("unreadable reply", sent)


def where(cfg):
    """The control endpoint as text."""
    endpoint = cfg["control"]
    return "%s:%d" % tuple(endpoint) if isinstance(endpoint, (tuple, list)) else endpoint
