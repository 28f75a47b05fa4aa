# The cores' transition tables name their target states as text (constant tuples
# stay in a board's flash): each target must be a state of the same core.
from meta1lite.proto import client_states, server_states


def _states(module, prefix):
    return set(getattr(module, name) for name in dir(module)
               if name.startswith(prefix) and name.isupper() and isinstance(getattr(module, name), str))


def test_client_transitions_go_to_client_states():
    states = _states(client_states, "S_")
    assert set(client_states.TRANSITIONS) == states
    for targets in client_states.TRANSITIONS.values():
        assert set(targets) <= states, targets


def test_server_transitions_go_to_server_states():
    table = server_states.TRANSITIONS
    for name in ("CONNECTED", "GREETED", "MAIL", "RCPT", "DATA", "AUTH", "STARTTLS", "CLOSED"):
        assert getattr(server_states, name) in table
    assert len(table) == 8
    for targets in table.values():
        assert set(targets) <= set(table), targets
