# Unit tests of meta1lite.netaddr (both runtimes): address parsing, CIDR
# matching for relay_from, IPv4-mapped IPv6 clients, the per-client limits' key.
from support import raises

from meta1lite.netaddr import Network, client_key, format_ip, match_any, parse_ip


def test_ipv4_parses_to_family_and_integer():
    assert parse_ip("127.0.0.1") == (4, 0x7F000001)
    assert parse_ip("255.255.255.255") == (4, 0xFFFFFFFF)


def test_bad_ipv4_is_rejected():
    for text in ("256.1.1.1", "1.2.3", "1.2.3.4.5", "01.2.3.4", "a.b.c.d", "", "1..2.3"):
        raises(ValueError, parse_ip, text)


def test_ipv6_forms_including_compression_and_v4_tail():
    assert parse_ip("::1") == (6, 1)
    assert parse_ip("::") == (6, 0)
    assert parse_ip("2001:db8::") == (6, 0x20010DB8 << 96)
    assert parse_ip("::ffff:127.0.0.1") == (6, (0xFFFF << 32) | 0x7F000001)
    assert parse_ip("fe80::1%eth0") == (6, (0xFE80 << 112) | 1)
    assert parse_ip("1:2:3:4:5:6:7:8")[1] & 0xFFFF == 8


def test_bad_ipv6_is_rejected():
    for text in (":::1", "1::2::3", "12345::", "1:2:3:4:5:6:7:8:9", "1:2:3:4:5:6:7::8", "g::1", ":1::"):
        raises(ValueError, parse_ip, text)


def test_format_round_trips_canonical_text():
    for text in ("10.0.0.1", "::1", "2001:db8::1", "::", "1:0:0:2::3", "fe80::"):
        assert format_ip(*parse_ip(text)) == text


def test_network_contains_addresses_of_its_prefix():
    lan = Network("192.168.0.0/16")
    assert lan.contains("192.168.44.7")
    assert not lan.contains("192.169.0.1")
    assert not lan.contains("::1")
    assert Network("::1/128").contains("::1")
    assert Network("2001:db8::/32").contains("2001:db8:ffff::1")
    assert Network("0.0.0.0/0").contains("8.8.8.8")


def test_ipv4_mapped_client_matches_ipv4_network():
    assert Network("127.0.0.0/8").contains("::ffff:127.0.0.1")
    assert match_any([Network("10.0.0.0/8")], "::ffff:10.1.2.3")
    assert not match_any([Network("10.0.0.0/8")], "::ffff:11.1.2.3")


def test_bare_address_is_one_host():
    host = Network("10.1.2.3")
    assert host.prefix == 32 and host.contains("10.1.2.3") and not host.contains("10.1.2.4")


def test_host_bits_and_bad_prefixes_are_errors_with_a_hint():
    exc = raises(ValueError, Network, "192.168.1.0/16")
    assert "192.168.0.0/16" in str(exc)
    for text in ("10.0.0.0/33", "::/129", "10.0.0.0/", "10.0.0.0/x"):
        raises(ValueError, Network, text)


def test_match_any_is_false_for_junk_and_empty():
    assert not match_any([Network("0.0.0.0/0")], "not-an-ip")
    assert not match_any([], "127.0.0.1")


def test_networks_compare_by_value():
    assert Network("::1/128") == Network("0::1")
    assert Network("10.0.0.0/8") != Network("10.0.0.0/9")
    assert str(Network("2001:DB8::/32")) == "2001:db8::/32"


def test_per_client_limits_count_an_ipv6_client_by_its_84_bit_prefix():
    # a host given a /64 (or a /80) must not get a fresh connection and message
    # allowance for every address in it: Postfix 3.8's prefix length
    key = client_key
    assert key("192.0.2.7") == "192.0.2.7"
    assert key("::ffff:192.0.2.7") == "192.0.2.7"
    assert key("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2:3::/84"
    assert key("2001:db8:1:2:3:fff:ffff:ffff") == key("2001:db8:1:2:3::1")
    assert key("2001:db8:1:2:3:1000::") != key("2001:db8:1:2:3::")
    assert key("::1") == "::/84"
    assert key("not an address") == "not an address"
