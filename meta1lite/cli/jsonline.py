# meta1lite.cli.jsonline - JSON output of the queue tools, byte for byte the same on
# CPython and MicroPython (whose json.dumps neither keeps key order nor escapes
# non-ASCII).
# Owns: dumps(value, order): json.dumps's default form (", " and ": ", ASCII
# only, \uXXXX escapes), dict keys in the order given, the rest sorted. Must
# never: be imported by the daemon (the control channel uses the json module).
from meta1lite.const import const

ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t",
           "\b": "\\b", "\f": "\\f"}
_BMP_END = const(0x10000)


def _string(text):
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in ESCAPES:
            out.append(ESCAPES[ch])
        elif 32 <= code < 127:
            out.append(ch)
        elif code < _BMP_END:
            out.append("\\u%04x" % code)
        else:
            code -= _BMP_END
            out.append("\\u%04x\\u%04x" % (0xD800 + (code >> 10), 0xDC00 + (code & 0x3FF)))
    out.append('"')
    return "".join(out)


def _keys(obj, order):
    known = [k for k in order if k in obj]
    return known + sorted(k for k in obj if k not in order)


def dumps(value, order=()):
    """value (dict, list, tuple, str, int, float, bool, None) as one line of JSON."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        return "{" + ", ".join(_string(str(k)) + ": " + dumps(value[k], order)
                               for k in _keys(value, order)) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(dumps(v, order) for v in value) + "]"
    return _string(str(value))
