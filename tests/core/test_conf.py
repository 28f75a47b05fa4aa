# Unit tests of meta1lite.conf (both runtimes): the language, typed values,
# defaults, validation with FILE:LINE:COL errors, and the shipped files.
from support import raises, repo_root

from meta1lite import conf
from meta1lite.netaddr import Network


def _errors(text):
    return [str(e) for e in conf.check(text, "t.conf")]


def _one_error(text):
    errors = _errors(text)
    assert len(errors) == 1, errors
    return errors[0]


def test_default_config_has_every_option_at_design_values():
    cfg = conf.load(None)
    assert cfg["hostname"] == "relay.home.arpa" and cfg["spool"] == "meta1lite-spool"
    assert cfg["postmaster"] == "root@relay.home.arpa" and cfg["log_level"] == "info"
    assert cfg["control"] == "meta1lite-spool/control"
    smtps = cfg["smtps"]
    assert smtps["listen"] == [("127.0.0.1", 2525)] and smtps["listen_tls"] == []
    assert smtps["relay_from"] == [Network("127.0.0.0/8"), Network("::1/128")]
    assert smtps["max_message_size"] == 10 * 1024 * 1024 and smtps["io_timeout"] == 300
    assert smtps["bare_lf"] == "reject" and smtps["add_missing_headers"] is True
    assert smtps["tls"] is None and smtps["auth"] is None
    assert cfg["smar"]["route"] == [("*", {"via": "mx", "tls": "opportunistic", "tls_verify": True,
                                           "auth": None, "rewrite_sender": None,
                                           "rewrite_from_header": False})]
    assert cfg["smar"]["sender_route"] == [] and cfg["smar"]["dns_timeout"] == 5
    assert cfg["smtpc"]["port"] == 25 and cfg["smtpc"]["credentials"] == []
    qmgr = cfg["qmgr"]
    assert (qmgr["retry_min"], qmgr["retry_max"], qmgr["max_queue_lifetime"]) == (300, 3600, 432000)
    assert (qmgr["max_queue_size"], qmgr["min_free_space"]) == (32 * 1024 * 1024, 65536)


def test_shipped_default_file_equals_the_schema_defaults():
    cfg = conf.load(repo_root() + "/conf/meta1lite.conf")
    assert cfg["config_file"].endswith("meta1lite.conf")
    cfg["config_file"] = None
    assert cfg == conf.load(None)


def test_examples_are_valid():
    base = repo_root() + "/conf/examples/"
    router = conf.load(base + "router-isp-smarthost.conf")
    assert router["spool"] == "/var/spool/meta1lite"
    assert router["smar"]["route"][0][1]["via"] == "[smtp.isp.example]:587"
    assert conf.parse_via(router["smar"]["route"][0][1]["via"]) == ("direct", "smtp.isp.example", 587)
    assert router["smar"]["route"][0][1]["tls"] == "required"
    assert router["smtpc"]["credentials"][0][0] == "isp"
    pico = conf.load(base + "picow.conf")
    assert pico["spool"] == "/spool" and pico["smtps"]["listen"] == [("0.0.0.0", 25)]
    assert pico["smtpc"]["ca_file"] and not isinstance(pico["control"], tuple)  # the console asks in-process


def test_language_sections_lists_comments_case_and_optional_semicolon():
    cfg = conf.loads('''
    HOSTNAME = "Mail.Example";   # strings keep their case
    smtps {
        Listen = { 127.0.0.1:25, [::1]:2525, localhost:26, };   # trailing comma
        bare_lf = NORMALIZE; add_missing_headers = off;
        local_domains = { Example.ORG };
    };
    qmgr { max_queue_size = 1G; retry_min = 1h30m; max_queue_lifetime = 90; }
    ''')
    assert cfg["hostname"] == "Mail.Example"
    assert cfg["smtps"]["listen"] == [("127.0.0.1", 25), ("::1", 2525), ("localhost", 26)]
    assert cfg["smtps"]["bare_lf"] == "normalize" and cfg["smtps"]["add_missing_headers"] is False
    assert cfg["smtps"]["local_domains"] == ["example.org"]
    assert cfg["qmgr"]["max_queue_size"] == 1024 ** 3
    assert cfg["qmgr"]["retry_min"] == 5400 and cfg["qmgr"]["max_queue_lifetime"] == 90


def test_string_escapes():
    cfg = conf.loads(r'postmaster = "a\"b\\c";')
    assert cfg["postmaster"] == 'a"b\\c'
    assert "unknown escape" in _one_error(r'postmaster = "a\nb";')


def test_routes_keep_file_order_and_get_a_default_star_route():
    cfg = conf.loads('''
    smar {
        route "example.org" { via = "[smtp.isp.example]:587"; auth = "isp"; rewrite_sender = "me@isp.example"; }
        route ".example.net" { via = "relay.example.net:25"; tls = required; tls_verify = no; }
        sender_route "*@work.example" { via = "[smtp.work.example]:587"; }
    }
    smtpc { tls = off; credentials "isp" { user = "me"; password_file = "/p"; } }
    ''')
    routes = cfg["smar"]["route"]
    assert [label for label, _ in routes] == ["example.org", ".example.net", "*"]
    assert routes[0][1]["auth"] == "isp" and routes[0][1]["tls"] == "off"      # inherits smtpc.tls
    assert routes[1][1]["tls"] == "required" and routes[1][1]["tls_verify"] is False
    assert conf.parse_via(routes[1][1]["via"]) == ("lookup", "relay.example.net", 25)
    assert routes[2][1]["via"] == "mx"
    assert cfg["smar"]["sender_route"][0][0] == "*@work.example"
    assert cfg["smtpc"]["credentials"] == [("isp", {"user": "me", "password_file": "/p"})]


def test_optional_sections_fill_defaults_and_need_required_options():
    cfg = conf.loads('smtps { tls { certificate = "c.pem"; key = "k.pem"; } auth { users = "u"; } }')
    assert cfg["smtps"]["tls"] == {"certificate": "c.pem", "key": "k.pem"}
    assert cfg["smtps"]["auth"] == {"users": "u", "max_failures": 5, "lockout": 600}
    assert _one_error('smtps { tls { key = "k"; } }') == \
        "t.conf:1:9: error: section 'smtps.tls' needs 'certificate'"


def test_missing_semicolon_points_after_the_value():
    assert _one_error('hostname = "a"\nspool = "s";') == \
        "t.conf:1:15: error: missing ';' after the value of 'hostname'"


def test_unknown_option_suggests_the_nearest_name():
    error = _one_error("smtps {\n  max_mesage_size = 1M;\n}")
    assert error.startswith("t.conf:2:3: error: unknown option 'max_mesage_size'")
    assert error.endswith("did you mean 'max_message_size'?")
    assert "did you mean 'listen'" in _one_error("smtps { lisetn = { }; }")
    assert "did you mean" not in _one_error("frobnicate = 1;")


def test_bad_values_point_at_the_value():
    assert _one_error("qmgr { max_queue_size = 10Q; }").startswith("t.conf:1:25: error: bad size '10Q'")
    assert _one_error("qmgr {\n retry_min = 5x; }").startswith("t.conf:2:14: error: bad duration '5x'")
    assert "bad duration" in _one_error("qmgr { retry_min = 1h30; }")
    assert "is not one of opportunistic | required | off" in _one_error("smtpc { tls = maybe; }")
    assert "is not yes or no" in _one_error("smtps { add_missing_headers = perhaps; }")
    assert "port 0 is not in 1..65535" in _one_error("smtpc { port = 0; }")
    assert "below the minimum" in _one_error("smtps { max_connections = 0; }")
    assert "takes one value, not a list" in _one_error("hostname = { a, b };")


def test_mcp_section_defaults_values_and_errors():
    assert conf.loads("")["mcp"] == {"user": None, "stop_timeout": 10, "restart_max": 60,
                                     "watchdog_ms": 0, "heap_log_interval": 600,
                                     "fault_injection": False}
    mcp = conf.loads('mcp { user = "meta1lite"; watchdog_ms = 8000; heap_log_interval = 0;'
                     ' fault_injection = yes; stop_timeout = 30s; }')["mcp"]
    assert (mcp["user"], mcp["watchdog_ms"], mcp["heap_log_interval"]) == ("meta1lite", 8000, 0)
    assert mcp["fault_injection"] is True and mcp["stop_timeout"] == 30
    assert "below the minimum" in _one_error("mcp { stop_timeout = 0s; }")
    # issue 11: min_free_space = 0 let a full disk take the space delivery records need
    assert "below the minimum" in _one_error("qmgr { min_free_space = 0; }")
    assert "did you mean 'watchdog_ms'?" in _one_error("mcp { watchdogms = 8000; }")


def test_a_permitted_message_must_fit_in_an_empty_queue():
    # issue 11 item 5: SIZE 10485760 with max_queue_size = 2M refused 2-10 MB forever
    error = _one_error("smtps {\n  max_message_size = 10M;\n}\nqmgr { max_queue_size = 2M; }")
    assert error.startswith("t.conf:2:3: error: max_message_size (10485760 bytes")
    assert "does not fit in qmgr.max_queue_size (2097152 bytes)" in error
    assert error.endswith("lower max_message_size to at most 2095104 or raise max_queue_size")
    assert _one_error("qmgr {\n max_queue_size = 1M; }").startswith("t.conf:2:2: error: ")
    assert "max_message_size = 0 (no limit)" in _one_error("smtps { max_message_size = 0; }")
    assert _one_error("smtps { max_message_size = 30M; }\nqmgr { max_queue_size = 30M; }")
    assert conf.check("smtps { max_message_size = 1M; }\nqmgr { max_queue_size = 1026K; }") == []


def test_bad_endpoints_networks_and_via():
    error = _one_error("smtps { listen = { 127.0.0.1:25, ::1:25 }; }")
    assert error.startswith("t.conf:1:34:") and "brackets" in error
    assert "missing ':port'" in _one_error("smtps { listen = { 127.0.0.1 }; }")
    assert "host bits set" in _one_error("smtps { relay_from = { 10.1.0.0/8 }; }")
    assert "bad endpoint" in _one_error('smar { route "*" { via = "[smtp.isp:587"; } }')
    assert "not on loopback" in _one_error("control = 192.0.2.1:2526;")
    assert "IP address" in _one_error('smar { nameservers = { "dns.example:53" }; }')


def test_unterminated_string_is_reported_at_the_quote_once():
    assert _one_error('hostname = "abc;\nspool = "s";') == \
        "t.conf:1:12: error: unterminated string: missing closing '\"'"


def test_unbalanced_braces():
    assert _one_error("smtps {\n  max_connections = 3;\n") == \
        "t.conf:1:7: error: unbalanced braces: the '{' of 'smtps' is never closed (missing '}')"
    assert _one_error("qmgr { }\n}\n") == \
        "t.conf:2:1: error: unbalanced braces: '}' without a matching '{'"


def test_duplicates_are_errors_with_the_first_position():
    assert _one_error("qmgr { }\nqmgr { }") == \
        "t.conf:2:1: error: duplicate section 'qmgr' (first at line 1, column 1)"
    assert "duplicate option 'spool'" in _one_error('spool = "a"; spool = "b";')
    error = _one_error('smar { route "a.org" { } route "A.ORG" { } }')
    assert error.startswith("t.conf:1:26: error: duplicate section 'route \"A.ORG\"'")


def test_route_auth_must_name_credentials():
    error = _one_error('smar { route "*" { via = "[h]:587"; auth = "isp"; } }')
    assert error.startswith("t.conf:1:44:") and "no smtpc credentials" in error


def test_sections_and_options_are_not_interchangeable():
    assert "is a section" in _one_error("smtps = 1;")
    assert "is an option" in _one_error("smtps { listen { } }")
    assert "needs a label" in _one_error("smar { route { via = mx; } }")
    assert "takes no label" in _one_error('qmgr "x" { }')


def test_many_errors_are_all_reported_in_order():
    errors = conf.check("a = 1;\nb = 2;\nqmgr { retry_min = x; max_messages = y; }\n", "t.conf")
    assert [(e.line, e.col) for e in errors] == [(1, 1), (2, 1), (3, 20), (3, 38)]


def test_errors_are_bounded():
    errors = conf.check("x = 1;\n" * (conf.MAX_ERRORS + 20), "t.conf")
    assert len(errors) == conf.MAX_ERRORS


def test_loads_raises_config_error_listing_everything():
    exc = raises(conf.ConfigError, conf.loads, "a = 1;\nb = 2;", "f.conf")
    assert len(exc.errors) == 2
    assert str(exc).split("\n")[1].startswith("f.conf:2:1: error:")


def test_missing_file_raises_oserror():
    raises(OSError, conf.load, "/nonexistent/meta1lite.conf")


def test_size_and_duration_converters():
    assert conf.to_size("512") == 512 and conf.to_size("64k") == 65536
    assert conf.to_duration("30s") == 30 and conf.to_duration("5d") == 432000
    assert conf.to_duration("1w") == 604800
    for text in ("", "m", "5mm5", "-1", "1.5h"):
        raises(ValueError, conf.to_duration, text)
    for text in ("", "K", "1.5M", "10MB"):
        raises(ValueError, conf.to_size, text)


def test_file_lines_across_read_chunks():
    import io
    long_value = "x" * (3 * conf.READ_CHUNK + 7)
    text = 'hostname = "%s";\n\n# %s\nspool = "s";' % (long_value, "c" * conf.READ_CHUNK)
    lines = list(conf._file_lines(io.StringIO(text)))
    assert "".join(lines) == text and len(lines) == 4
    assert [line[-1:] for line in lines[:3]] == ["\n", "\n", "\n"]
    cfg = conf.loads(text)
    assert cfg["hostname"] == long_value and cfg["spool"] == "s"


def test_every_schema_option_has_a_doc():
    from meta1lite.conf import hints as confhints
    from meta1lite.conf import schema as confschema
    for table in confschema.TABLES:
        names = [entry[0] for entry in confschema.entries(table)]
        documented = [line.split("|")[0] for line in confhints.DOCS[table].split("\n") if line]
        assert sorted(names) == sorted(documented), table
        for name in names:
            assert confhints.doc(table, name), (table, name)
    assert sorted(confhints.DOCS) == sorted(confschema.TABLES)
    assert confhints.doc("qmgr", "retry_min") == "first retry after a temporary failure"
    assert confhints.doc("qmgr", "nonsense") is None
