# Unit tests of meta1lite.proto.address (RFC 5321 paths, ESMTP parameters).
# Shared subset: runs under CPython (pytest) and the MicroPython unix port.
from support import raises

from meta1lite.proto import address

D = "outside.example"
SRV = "relay.test"
IP = "[192.0.2.25]"


def _parse(text, **kw):
    return address.parse_path(text.encode("utf-8"), **kw)


def _reply(text, **kw):
    """(code, enhanced, text) of the refusal of `text`."""
    bad = raises(address.AddressError, address.parse_path, text.encode("utf-8"), **kw)
    return address.replies.parts(bad.reply)


def _fill(template):
    return template.replace("SRV", SRV).replace("IP", IP).replace("D", D)


def test_plain_mailbox():
    box = _parse("<User.Name+tag@Example.ORG>")
    assert box.local == "User.Name+tag" and box.local_unquoted == "User.Name+tag"
    assert box.domain == "example.org" and not box.is_literal and box.ip is None
    assert not box.null and not box.relay_trick and box.address == "User.Name+tag@example.org"


def test_null_path_only_for_senders():
    assert _parse("<>", sender=True).null
    assert _parse("<>", sender=True).address == ""
    assert _reply("<>")[:2] == (501, "5.1.3")


def test_quoted_local_part_with_quoted_pairs():
    box = _parse('<"john \\"jr\\" doe"@example.org>')
    assert box.quoted and box.local == '"john \\"jr\\" doe"'
    assert box.local_unquoted == 'john "jr" doe'
    assert _reply('<"unterminated@example.org>')[0] == 501
    assert _reply('<"a"b@example.org>')[0] == 501


def test_address_literals():
    box = _parse("<u@[192.0.2.1]>")
    assert box.is_literal and box.ip == (4, 0xC0000201) and box.domain == "[192.0.2.1]"
    box = _parse("<u@[IPv6:2001:db8::1]>")
    assert box.is_literal and box.ip[0] == 6 and box.domain == "[ipv6:2001:db8::1]"
    for bad in ("<u@[300.1.1.1]>", "<u@[1.2.3]>", "<u@[2001:db8::1]>", "<u@[IPv6:1.2.3.4]>",
                "<u@[tag:stuff]>", "<u@[]>", "<u@[IPv6:fe80::1%eth0]>"):
        assert _reply(bad)[0] == 501, bad


def test_bad_syntax():
    for bad in ("u@example.org", "<u@example.org", "<u@@example.org>", "<u@-bad.org>",
                "<u@bad-.org>", "<u@exa mple.org>", "<.u@example.org>", "<u.@example.org>",
                "<u..v@example.org>", "<u@example..org>", "<u@>", "<@example.org>",
                "<u@example.org.>", "<u v@example.org>", "<u@a_b.org>", "<>x"):
        assert _reply(bad)[0] == 501, bad
    assert _reply("<u@@example.org>", sender=True)[:2] == (501, "5.1.7")


def test_source_route_is_parsed_and_flagged():
    box = _parse("<@hop1.example,@[192.0.2.9]:User@Final.Example>")
    assert box.has_route and box.relay_trick
    assert box.route == ("hop1.example", "[192.0.2.9]")
    assert box.local == "User" and box.domain == "final.example"
    assert _reply("<@hop1.example:>")[0] == 501
    assert _reply("<@hop1.example>")[0] == 501
    assert _reply("<@hop1.example,hop2:u@d.example>")[0] == 501


def test_open_relay_list_of_issue_3():
    # (template, parses?, has_route, has_percent, has_bang, has_at, final domain)
    cases = (
        ("<t@D>", True, False, False, False, False, D),
        ("<t%D@IP>", True, False, True, False, False, IP),
        ("<t%D@SRV>", True, False, True, False, False, SRV),
        ('<"t@D">', False, 0, 0, 0, 0, None),
        ('<"t%D">', False, 0, 0, 0, 0, None),
        ("<t@D@IP>", False, 0, 0, 0, 0, None),
        ('<"t@D"@IP>', True, False, False, False, True, IP),
        ("<t@D@SRV>", False, 0, 0, 0, 0, None),
        ("<@IP:t@D>", True, True, False, False, False, D),
        ("<@SRV:t@D>", True, True, False, False, False, D),
        ("<D!t>", False, 0, 0, 0, 0, None),
        ("<D!t@IP>", True, False, False, True, False, IP),
        ("<D!t@SRV>", True, False, False, True, False, SRV),
    )
    for template, ok, route, percent, bang, at, domain in cases:
        text = _fill(template)
        if not ok:
            assert _reply(text)[0] == 501, text
            continue
        box = _parse(text)
        assert (box.has_route, box.has_percent, box.has_bang, box.has_at) == \
            (route, percent, bang, at), text
        assert box.domain == domain, text
        assert box.relay_trick == (route or percent or bang or at), text
    for sender in ("<>", "<f@D>", "<f@SRV>", "<f@IP>"):
        assert not _parse(_fill(sender), sender=True).relay_trick


def test_postmaster_without_domain():
    box = _parse("<Postmaster>", allow_postmaster=True)
    assert box.domain == "" and box.local_unquoted == "Postmaster" and box.address == "Postmaster"
    assert _reply("<Postmaster>")[0] == 501
    assert _reply("<bob>", allow_postmaster=True)[0] == 501


def test_length_limits():
    assert _parse("<%s@example.org>" % ("a" * 64)).local == "a" * 64
    assert _reply("<%s@example.org>" % ("a" * 65))[:2] == (501, "5.1.3")
    assert "Local part" in raises(address.AddressError, address.parse_path,
                                  ("<%s@example.org>" % ("a" * 65)).encode()).detail
    label = "b" * 63
    domain = ".".join([label] * 3) + "." + "c" * 58          # 250 octets
    assert len(_parse("<u@%s>" % domain).domain) == 250
    assert _reply("<u@%s.%s>" % (label, "b" * 64))[0] == 501   # 64-octet label
    long_domain = ".".join([label] * 4) + ".cc"                  # 257 octets
    assert _reply("<u@%s>" % long_domain)[0] == 501
    path = "<%s@%s>" % ("a" * 64, domain[:189])                 # 256 octets
    assert len(path) == 256 and _parse(path).domain
    assert _reply("<%s@%s>" % ("a" * 64, domain[:190])) == address.replies.parts(address.replies.PATH_TOO_LONG)


def test_smtputf8():
    text = "<jos\u00e9@exampl\u00e9.org>"
    reply = _reply(text)
    assert reply[:2] == (553, "5.6.7")
    box = _parse(text, smtputf8=True)
    assert box.utf8 and box.local == "jos\u00e9"
    bad = raises(address.AddressError, address.parse_path, b"<a\xff@example.org>", smtputf8=True)
    assert address.replies.parts(bad.reply)[:2] == (553, "5.6.7")


def test_c1_control_characters_are_refused_in_smtputf8_addresses():
    # NEL, CSI (a terminal escape): valid UTF-8, but the address is logged as given
    for raw in (b"\xc2\x85", b"\xc2\x9b31m", b"\xc2\x80"):
        raises(address.AddressError, address.parse_path, b"<a" + raw + b"@example.org>",
               smtputf8=True)
    assert _parse("<a\u00a0b\u00e9@example.org>", smtputf8=True).utf8    # C2 A0: not a control


def test_invalid_utf8_is_refused_on_both_runtimes():
    # issue 11 item 6: MicroPython's decode accepted overlong and surrogate forms (250)
    for raw in (b"\xc0\xaf", b"\xed\xa0\x80", b"\xe0\x80\xaf", b"\xf0\x80\x80\xaf",
                b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xc3", b"\x80", b"\xc3\x28",
                b"\xe2\x82", b"\xff"):
        bad = raises(address.AddressError, address.parse_path,
                     b"<a" + raw + b"@example.org>", smtputf8=True)
        assert bad.reply == address.replies.BAD_UTF8, raw
        assert not address.valid_utf8(raw)
    for text in ("\u00e9", "\u20ac", "\ud55c", "\U0001f600", "\U0010ffff", "\ud7ff", "\ue000"):
        assert address.valid_utf8(text.encode("utf-8")), text
        assert _parse("<a%s@example.org>" % text, smtputf8=True).utf8


def test_split_path():
    assert address.split_path(b"<a@b> SIZE=10") == (b"<a@b>", b" SIZE=10")
    assert address.split_path(b" <a@b>") == (b"<a@b>", b"")
    assert address.split_path(b'<"x>y"@b> BODY=7BIT') == (b'<"x>y"@b>', b" BODY=7BIT")
    for bad in (b"a@b", b"<a@b", b"<a@b>junk", b""):
        assert address.replies.parts(raises(address.AddressError, address.split_path, bad).reply)[0] == 501


def test_params():
    params = address.parse_params(b" size=10  Body=8BITMIME SMTPUTF8")
    assert params == {"SIZE": "10", "BODY": "8BITMIME", "SMTPUTF8": None}
    assert address.parse_params(b"") == {}
    assert raises(address.AddressError, address.parse_params, b" SIZE=1 size=2").reply == \
        address.replies.DUPLICATE_PARAMETER
    for junk in (b" =x", b" SIZE=", b" -X=1", b" A=b=c", b" K\x01=1", b" K=\xc3\xa9",
                 b" " + b"K" * 33):
        bad = raises(address.AddressError, address.parse_params, junk)
        assert address.replies.parts(bad.reply)[:2] == (501, "5.5.4"), junk
    many = b"".join([b" K%d=1" % i for i in range(11)])
    bad = raises(address.AddressError, address.parse_params, many)
    assert address.replies.parts(bad.reply)[0] == 501


def test_never_raises_other_errors_on_junk():
    junk = (b"<\x00@a>", b"<a@\x00>", b"<\"\\\x01\"@a>", b"<\"\\", b"<\xff\xfe>", b"<@[:a@b>",
            b"<@]:a@b>", b"<[1.2.3.4]>", b"<a@[1.2.3.4>", b"<\"a\"", b"<\"\">", b"<\"\"@a.b>")
    for raw in junk:
        for utf8 in (False, True):
            try:
                address.parse_path(raw, smtputf8=utf8)
            except address.AddressError:
                pass
