"""The client state table and its listeners."""

from __future__ import annotations

import itertools
import logging

import pytest

from roomcast.client.state import (
    TRANSITIONS,
    ClientState,
    InvalidStateChange,
    StateChange,
    StateMachine,
    can_transition,
)
from roomcast.errors import ClientError, InvalidState

S = ClientState

# The plan's table, written out independently: the module must match it exactly.
LEGAL = {
    (S.DISCONNECTED, S.CONNECTING),
    (S.CONNECTING, S.CONNECTED),
    (S.CONNECTING, S.RECONNECTING),
    (S.CONNECTING, S.DISCONNECTED),
    (S.CONNECTED, S.RECONNECTING),
    (S.CONNECTED, S.DISCONNECTED),
    (S.RECONNECTING, S.CONNECTING),
    (S.RECONNECTING, S.DISCONNECTED),
    *{(s, S.CLOSED) for s in S if s is not S.CLOSED},
}


def machine_in(state: ClientState) -> StateMachine:
    """A machine brought to ``state`` through legal moves."""
    path = {
        S.DISCONNECTED: [],
        S.CONNECTING: [S.CONNECTING],
        S.CONNECTED: [S.CONNECTING, S.CONNECTED],
        S.RECONNECTING: [S.CONNECTING, S.CONNECTED, S.RECONNECTING],
        S.CLOSED: [S.CLOSED],
    }[state]
    sm = StateMachine()
    for step in path:
        sm.move(step)
    assert sm.state is state
    return sm


def test_table_is_the_agreed_one() -> None:
    table = {(a, b) for a, targets in TRANSITIONS.items() for b in targets}
    assert table == LEGAL
    assert set(TRANSITIONS) == set(S)


def test_starts_disconnected() -> None:
    assert StateMachine().state is S.DISCONNECTED


@pytest.mark.parametrize("old,new", sorted(LEGAL))
def test_legal_moves_change_state_and_are_announced(old: ClientState, new: ClientState) -> None:
    sm = machine_in(old)
    seen: list[StateChange] = []
    sm.add_listener(seen.append)
    change = sm.move(new, "why")
    assert change == StateChange(old, new, "why")
    assert sm.state is new
    assert seen == [change]
    assert can_transition(old, new)


ILLEGAL = sorted((a, b) for a, b in itertools.product(S, S) if a is not b and (a, b) not in LEGAL)


@pytest.mark.parametrize("old,new", ILLEGAL)
def test_illegal_moves_raise_and_change_nothing(old: ClientState, new: ClientState) -> None:
    sm = machine_in(old)
    seen: list[StateChange] = []
    sm.add_listener(seen.append)
    with pytest.raises(InvalidStateChange) as info:
        sm.move(new)
    assert sm.state is old
    assert seen == []
    assert (info.value.current, info.value.target) == (old, new)
    assert str(old) in str(info.value) and str(new) in str(info.value)


def test_closed_is_final() -> None:
    sm = machine_in(S.CLOSED)
    for target in S:
        if target is not S.CLOSED:
            with pytest.raises(InvalidStateChange):
                sm.move(target)
    assert sm.state is S.CLOSED


@pytest.mark.parametrize("state", list(S))
def test_moving_to_the_current_state_is_a_silent_no_op(state: ClientState) -> None:
    sm = machine_in(state)
    seen: list[StateChange] = []
    sm.add_listener(seen.append)
    assert sm.move(state) is None
    assert seen == []


def test_invalid_state_change_is_catchable_as_client_error_and_assertion() -> None:
    sm = StateMachine()
    for kind in (ClientError, InvalidState, AssertionError):
        with pytest.raises(kind):
            sm.move(S.CONNECTED)


def test_states_read_as_plain_strings() -> None:
    assert S.CONNECTED == "connected"
    assert str(S.RECONNECTING) == "reconnecting"
    assert f"{S.CLOSED}" == "closed"


def test_listeners_run_in_order_and_a_failing_one_does_not_stop_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sm = StateMachine()
    calls: list[str] = []

    def broken(change: StateChange) -> None:
        calls.append("broken")
        raise RuntimeError("status bar exploded")

    sm.add_listener(lambda c: calls.append("first"))
    sm.add_listener(broken)
    sm.add_listener(lambda c: calls.append("last"))
    with caplog.at_level(logging.ERROR, logger="roomcast.client"):
        sm.move(S.CONNECTING)
        sm.move(S.CONNECTED)
    assert calls == ["first", "broken", "last"] * 2
    assert sm.state is S.CONNECTED
    errors = [r for r in caplog.records if r.name == "roomcast.client"]
    assert len(errors) == 2
    assert errors[0].exc_info is not None and "status bar exploded" in caplog.text


def test_remover_stops_notifications_and_can_be_called_twice() -> None:
    sm = StateMachine()
    seen: list[ClientState] = []
    remove = sm.add_listener(lambda c: seen.append(c.new))
    sm.move(S.CONNECTING)
    remove()
    remove()
    sm.move(S.CONNECTED)
    assert seen == [S.CONNECTING]


def test_same_listener_added_twice_runs_twice_and_needs_both_removers() -> None:
    sm = StateMachine()
    seen: list[ClientState] = []

    def listener(change: StateChange) -> None:
        seen.append(change.new)

    remove_a = sm.add_listener(listener)
    remove_b = sm.add_listener(listener)
    sm.move(S.CONNECTING)
    remove_a()
    sm.move(S.CONNECTED)
    remove_b()
    sm.move(S.DISCONNECTED)
    assert seen == [S.CONNECTING, S.CONNECTING, S.CONNECTED]


def test_a_listener_moving_the_machine_keeps_every_listener_in_order() -> None:
    # A listener that reacts to CONNECTING failing at once (e.g. no network) moves to
    # RECONNECTING; the second listener must still see CONNECTING first.
    sm = StateMachine()
    first: list[tuple[ClientState, ClientState]] = []
    second: list[tuple[ClientState, ClientState]] = []

    def react(change: StateChange) -> None:
        first.append((change.old, change.new))
        if change.new is S.CONNECTING:
            assert sm.move(S.RECONNECTING, "no network") is not None
            assert sm.state is S.RECONNECTING  # the state changes at once

    sm.add_listener(react)
    sm.add_listener(lambda c: second.append((c.old, c.new)))
    sm.move(S.CONNECTING)
    expected = [(S.DISCONNECTED, S.CONNECTING), (S.CONNECTING, S.RECONNECTING)]
    assert first == expected
    assert second == expected


def test_a_listener_removed_by_an_earlier_one_is_not_called() -> None:
    sm = StateMachine()
    seen: list[str] = []
    remove_b: list[object] = []

    def a(change: StateChange) -> None:
        seen.append("a")
        remove_b[0]()  # type: ignore[operator]

    sm.add_listener(a)
    remove_b.append(sm.add_listener(lambda c: seen.append("b")))
    sm.move(S.CONNECTING)
    assert seen == ["a"]
