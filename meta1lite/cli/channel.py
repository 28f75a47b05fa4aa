# meta1lite.cli.channel - the queue tools' side of the daemon's control channel
# (meta1lite/qmgr/control.py), on both runtimes.
# Owns: one request (a line, optionally followed by a payload of bytes) and its
# one-line JSON reply; DaemonDown when nobody answers. Must never: retry a request
# (an inject must not be sent twice), or wait longer than REPLY_TIMEOUT_S.
import json

from meta1lite.cli import host

CONNECT_TIMEOUT_S = 5
REPLY_TIMEOUT_S = 60            # an inject waits for the daemon's sync
MAX_REPLY = 1 << 20
RECV_CHUNK = 4096


class DaemonDown(Exception):
    """Nobody answers on the control channel. .sent: the request went out (the
    daemon may have acted on it) before the reply failed."""

    def __init__(self, text, sent=False):
        super().__init__(text)
        self.sent = sent


def _reply(sock):
    data = b""
    while not data.endswith(b"\n") and len(data) < MAX_REPLY:
        more = sock.recv(RECV_CHUNK)
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
        sock.settimeout(REPLY_TIMEOUT_S)
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
