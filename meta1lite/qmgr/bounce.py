# meta1lite.qmgr.bounce - delivery status notifications (RFC 3464 DSNs).
#
# Owns: choosing who gets a notification (the sender; postmaster once for a failed
# null-sender message; nobody otherwise), building the multipart/report message
# (a human part, message/delivery-status, text/rfc822-headers with the original
# header section) and queueing it with the null sender through the spool's
# writer+commit path. Must never: notify a null sender, notify postmaster about a
# notification that was itself sent to postmaster, read more than _HEADER_LIMIT bytes
# of the original message, or hold the original body in memory.
# Shared code: MicroPython and CPython.
from meta1lite import compat
from meta1lite.const import const

_HEADER_LIMIT = const(8 * 1024)  # bytes of the original's header section returned
_MAX_TEXT = const(400)          # characters of a diagnostic kept per recipient
KIND_SENDER, KIND_POSTMASTER = "sender", "postmaster"
CRLF = const("\r\n")


def recipient_for(cfg, msg, failed_addrs):
    """(address, kind) to notify about failures of msg, or None (log and drop)."""
    if msg.sender:
        return (msg.sender, KIND_SENDER)
    postmaster = (cfg.get("postmaster") or "").strip()
    info = msg.info or {}
    if not postmaster or info.get("dsn") == KIND_POSTMASTER:
        return None
    if postmaster.lower() in [a.lower() for a in failed_addrs]:
        return None
    return (postmaster, KIND_POSTMASTER)


def original_headers(chunks, limit=_HEADER_LIMIT):
    """The header section (bytes, ending in CRLF) of a body given as chunks; at most
    `limit` bytes, cut at a line end."""
    held = b""
    for chunk in chunks:
        held += chunk
        end = held.find(b"\r\n\r\n")
        if held.startswith(b"\r\n"):
            return b""
        if end >= 0:
            return held[:end + 2]
        if len(held) >= limit:
            break
    held = held[:limit]
    cut = held.rfind(b"\r\n")
    return held[:cut + 2] if cut >= 0 else b""


def _clean(text):
    text = " ".join(str(text).split())
    return text[:_MAX_TEXT]


def _remote_host(relay):
    if not relay or relay == "none":
        return None
    return relay.split("[", 1)[0]


def _boundary(dsn_id):
    return "%s.%d/%s" % (dsn_id, int(compat.wall_time()), "meta1lite")


def human_part(hostname, failures, postmaster_copy):
    """The text/plain explanation (str)."""
    lines = ["This is the mail system at host %s." % hostname, ""]
    if postmaster_copy:
        lines += ["A message with a null sender (a notification) could not be delivered.",
                  "This copy goes to the postmaster; the notification itself is dropped."]
    else:
        lines += ["I'm sorry to have to inform you that your message could not",
                  "be delivered to one or more recipients. It's attached below."]
    lines += ["", "For further assistance, please contact your postmaster.", "",
              "                   The mail system", ""]
    for addr, status, diag, relay in failures:
        lines.append("<%s>: %s" % (addr, diag))
    return CRLF.join(lines) + CRLF


def status_part(hostname, queue_id, arrival, failures):
    """The message/delivery-status body (str): per-message then per-recipient fields."""
    lines = ["Reporting-MTA: dns; %s" % hostname, "X-Meta1lite-Queue-ID: %s" % queue_id]
    if arrival:
        lines.append("Arrival-Date: %s" % compat.rfc5322_date(arrival))
    for addr, status, diag, relay in failures:
        lines += ["", "Final-Recipient: rfc822; %s" % addr, "Action: failed", "Status: %s" % status]
        host = _remote_host(relay)
        if host:
            lines.append("Remote-MTA: dns; %s" % host)
        lines.append("Diagnostic-Code: smtp; %s" % diag)
    return CRLF.join(lines) + CRLF


def build(hostname, msg, failures, headers, dsn_id, target, postmaster_copy=False, when=None):
    """The DSN (bytes). failures: [(address, status X.Y.Z, diagnostic text, relay)]."""
    when = compat.wall_time() if when is None else when
    boundary = _boundary(dsn_id)
    head = [
        "From: MAILER-DAEMON@%s (Mail Delivery System)" % hostname,
        "To: <%s>" % target,
        "Subject: %s" % ("Postmaster copy: Undelivered Mail" if postmaster_copy
                         else "Undelivered Mail Returned to Sender"),
        "Date: %s" % compat.rfc5322_date(when),
        "Message-ID: <%d.%s@%s>" % (int(when), dsn_id, hostname),
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        "Content-Type: multipart/report; report-type=delivery-status;",
        "\tboundary=\"%s\"" % boundary,
        "Content-Transfer-Encoding: 8bit",
        "",
        "This is a MIME-encapsulated message.",
        "",
        "--" + boundary,
        "Content-Description: Notification",
        "Content-Type: text/plain; charset=us-ascii",
        "",
    ]
    out = CRLF.join(head) + CRLF + human_part(hostname, failures, postmaster_copy) + CRLF
    out += "--%s%sContent-Description: Delivery report%sContent-Type: message/delivery-status%s%s" % (
        boundary, CRLF, CRLF, CRLF, CRLF)
    out += status_part(hostname, msg.id, msg.arrival if msg.arrival else None, failures) + CRLF
    out += "--%s%sContent-Description: Undelivered Message Headers%s" % (boundary, CRLF, CRLF)
    out += "Content-Type: text/rfc822-headers%s%s" % (CRLF, CRLF)
    tail = "%s--%s--%s" % (CRLF, boundary, CRLF)
    return out.encode() + headers + tail.encode()


def failure_list(msg, failed, addrs):
    """[(address, status, diagnostic, relay)] from outcomes (smtpc.Result shape)."""
    out = []
    for res in failed:
        addr = addrs.get(res.index) or msg.recipients[res.index].addr
        diag = _clean(res.text)
        out.append((addr, res.enhanced or "5.0.0", diag, getattr(res, "relay", None)))
    return out


async def queue_dsn(cfg, spool, msg, failed, addrs, target):
    """Queue one DSN about `failed` outcomes of msg to target=(address, kind), sender <>;
    returns its queue ID (raises SpoolFull/OSError if it cannot be queued)."""
    address, kind = target
    body = None
    try:
        body = spool.read_body(msg.id)
        headers = original_headers(body)
    except Exception:  # noqa: BLE001 - an unreadable original still gets its DSN
        headers = b""
    finally:
        if body is not None:
            body.close()        # read in part: MicroPython never closes it by itself
    writer = spool.new_message()
    try:
        data = build(cfg["hostname"], msg, failure_list(msg, failed, addrs), headers,
                     writer.queue_id, address, kind == KIND_POSTMASTER)
        writer.write(data)
        info = {"dsn": kind, "orig": msg.id}
        return await spool.commit(writer, "", [address], info)
    except BaseException:           # MemoryError, cancelled: never leak the writer
        writer.abort()
        raise
