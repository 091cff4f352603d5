"""EngineIOSession: every heartbeat, receive, upgrade and close transition, with explicit ``now``."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roomcast import disconnect
from roomcast.errors import RemoteProtocolError
from roomcast.protocol.engineio import Packet, PacketType
from roomcast.protocol.engineio_session import (
    Closed,
    EngineIOSession,
    Message,
    ProbeAccepted,
    SendPing,
    SessionState,
    Transport,
    Upgraded,
)

T = PacketType
INTERVAL = 25.0
TIMEOUT = 20.0
T0 = 1000.0


def make(transport: Transport = Transport.POLLING, now: float = T0) -> EngineIOSession:
    return EngineIOSession("sid-1", transport=transport, ping_interval=INTERVAL, ping_timeout=TIMEOUT, now=now)


def ping(s: EngineIOSession, now: float) -> None:
    """Drive the session to its first ping at ``now`` (which must be at/after the deadline)."""
    assert s.on_deadline(now) == [SendPing()]


def upgrading() -> EngineIOSession:
    s = make()
    s.start_probe()
    assert s.receive_probe(Packet(T.PING, "probe"), T0 + 1) == [ProbeAccepted()]
    return s


def closed_session() -> EngineIOSession:
    s = make()
    assert s.close(disconnect.SHUTDOWN) == [Closed(disconnect.SHUTDOWN)]
    return s


# -- construction -----------------------------------------------------------------------


@pytest.mark.parametrize("transport", list(Transport))
def test_new_session_is_open_and_first_ping_is_one_interval_after_now(transport: Transport) -> None:
    s = make(transport)
    assert s.state is SessionState.OPEN
    assert s.transport is transport
    assert not s.closed
    assert s.close_reason is None
    assert s.next_deadline() == T0 + INTERVAL


# -- heartbeat ------------------------------------------------------------------------


@pytest.mark.parametrize("early", [T0, T0 + 1.0, T0 + INTERVAL - 0.001])
def test_no_ping_before_the_interval(early: float) -> None:
    s = make()
    assert s.on_deadline(early) == []
    assert s.next_deadline() == T0 + INTERVAL


@pytest.mark.parametrize("at", [T0 + INTERVAL, T0 + INTERVAL + 3.0])
def test_ping_at_or_after_deadline_arms_pong_deadline_from_ping_time(at: float) -> None:
    s = make()
    assert s.on_deadline(at) == [SendPing()]
    assert s.next_deadline() == at + TIMEOUT
    # The ping is sent once: waking again before the pong deadline does nothing.
    assert s.on_deadline(at) == []
    assert s.on_deadline(at + TIMEOUT - 0.001) == []
    assert s.state is SessionState.OPEN


def test_pong_rearms_next_ping_at_pong_time_plus_interval() -> None:
    s = make()
    ping(s, T0 + INTERVAL)
    pong_at = T0 + INTERVAL + 7.5
    assert s.receive(Packet(T.PONG), pong_at) == []
    assert s.next_deadline() == pong_at + INTERVAL
    assert s.on_deadline(pong_at + INTERVAL - 0.001) == []
    assert s.on_deadline(pong_at + INTERVAL) == [SendPing()]
    assert s.next_deadline() == pong_at + INTERVAL + TIMEOUT


def test_missed_pong_closes_with_ping_timeout_exactly_at_the_deadline() -> None:
    s = make()
    ping(s, T0 + INTERVAL)
    deadline = T0 + INTERVAL + TIMEOUT
    assert s.on_deadline(deadline - 1e-6) == []
    assert not s.closed
    assert s.on_deadline(deadline) == [Closed(disconnect.PING_TIMEOUT)]
    assert s.closed
    assert s.close_reason == disconnect.PING_TIMEOUT
    assert s.next_deadline() is None
    assert s.on_deadline(deadline + 100) == []


def test_late_wakeup_after_pong_deadline_still_times_out() -> None:
    s = make()
    ping(s, T0 + INTERVAL)
    assert s.on_deadline(T0 + 10_000) == [Closed(disconnect.PING_TIMEOUT)]


def test_pong_after_the_deadline_but_before_the_wakeup_saves_the_session() -> None:
    """Packets are handled in arrival order: a pong that was processed first re-arms."""
    s = make()
    ping(s, T0 + INTERVAL)
    late = T0 + INTERVAL + TIMEOUT + 1
    assert s.receive(Packet(T.PONG), late) == []
    assert s.on_deadline(late) == []
    assert s.next_deadline() == late + INTERVAL


def test_unsolicited_pong_does_not_move_the_ping_schedule() -> None:
    s = make()
    assert s.receive(Packet(T.PONG), T0 + 5) == []
    assert s.next_deadline() == T0 + INTERVAL


@pytest.mark.parametrize("packet", [Packet(T.MESSAGE, "x"), Packet(T.NOOP)])
def test_other_traffic_does_not_count_as_a_pong(packet: Packet) -> None:
    s = make()
    ping(s, T0 + INTERVAL)
    s.receive(packet, T0 + INTERVAL + 1)
    assert s.next_deadline() == T0 + INTERVAL + TIMEOUT
    assert s.on_deadline(T0 + INTERVAL + TIMEOUT) == [Closed(disconnect.PING_TIMEOUT)]


def test_heartbeat_keeps_running_during_an_upgrade() -> None:
    s = upgrading()
    assert s.on_deadline(T0 + INTERVAL) == [SendPing()]
    assert s.on_deadline(T0 + INTERVAL + TIMEOUT) == [Closed(disconnect.PING_TIMEOUT)]


# -- receive on the current transport ----------------------------------------------------


@pytest.mark.parametrize("data", ["hello", "", "€ ünïcode", b"\x00\x01\xff", b""])
def test_message_passes_through_unchanged(data: str | bytes) -> None:
    s = make()
    events = s.receive(Packet(T.MESSAGE, data), T0 + 1)
    assert events == [Message(data)]
    assert type(events[0].data) is type(data)  # type: ignore[union-attr]
    assert s.state is SessionState.OPEN
    assert s.next_deadline() == T0 + INTERVAL


def test_noop_is_ignored() -> None:
    s = make()
    assert s.receive(Packet(T.NOOP), T0 + 1) == []
    assert s.state is SessionState.OPEN
    assert s.next_deadline() == T0 + INTERVAL


@pytest.mark.parametrize("transport", list(Transport))
def test_close_packet_closes_normally(transport: Transport) -> None:
    s = make(transport)
    assert s.receive(Packet(T.CLOSE), T0 + 1) == [Closed(disconnect.NORMAL)]
    assert s.closed
    assert s.close_reason == disconnect.NORMAL
    assert s.next_deadline() is None


@pytest.mark.parametrize("transport", list(Transport))
@pytest.mark.parametrize(
    "packet",
    [
        Packet(T.OPEN),
        Packet(T.OPEN, '{"sid":"x"}'),
        Packet(T.UPGRADE),
        Packet(T.PING),
        Packet(T.PING, "probe"),
    ],
)
def test_illegal_packets_raise_and_close_the_session(transport: Transport, packet: Packet) -> None:
    s = make(transport)
    with pytest.raises(RemoteProtocolError) as info:
        s.receive(packet, T0 + 1)
    assert info.value.reason  # a reason to put on the wire
    assert s.closed
    assert s.close_reason == disconnect.BAD_REQUEST
    assert s.next_deadline() is None
    assert s.on_deadline(T0 + 10_000) == []
    assert s.receive(Packet(T.MESSAGE, "after"), T0 + 2) == []


def test_message_on_the_polling_transport_during_upgrade_still_passes_through() -> None:
    s = upgrading()
    assert s.receive(Packet(T.MESSAGE, "m"), T0 + 2) == [Message("m")]
    assert s.state is SessionState.UPGRADING


# -- upgrade ----------------------------------------------------------------------------


def test_upgrade_happy_path() -> None:
    s = make()
    assert s.can_probe()
    s.start_probe()
    assert not s.can_probe()
    assert s.transport is Transport.POLLING
    assert s.receive_probe(Packet(T.PING, "probe"), T0 + 1) == [ProbeAccepted()]
    assert s.state is SessionState.UPGRADING
    assert s.transport is Transport.POLLING
    assert s.receive_probe(Packet(T.UPGRADE), T0 + 2) == [Upgraded()]
    assert s.state is SessionState.OPEN
    assert s.transport is Transport.WEBSOCKET
    assert not s.can_probe()
    # the heartbeat was not disturbed by the upgrade
    assert s.next_deadline() == T0 + INTERVAL
    assert s.receive(Packet(T.MESSAGE, "on ws"), T0 + 3) == [Message("on ws")]


def test_second_probe_is_refused_after_an_upgrade() -> None:
    s = make()
    s.start_probe()
    s.receive_probe(Packet(T.PING, "probe"), T0 + 1)
    s.receive_probe(Packet(T.UPGRADE), T0 + 2)
    with pytest.raises(RemoteProtocolError):
        s.start_probe()
    assert s.state is SessionState.OPEN  # refusing the probe does not end the session


def test_second_probe_is_refused_while_one_is_in_progress() -> None:
    s = make()
    s.start_probe()
    assert not s.can_probe()
    with pytest.raises(RemoteProtocolError):
        s.start_probe()
    s2 = upgrading()
    with pytest.raises(RemoteProtocolError):
        s2.start_probe()
    assert s2.state is SessionState.UPGRADING


def test_probe_on_a_websocket_session_is_refused() -> None:
    s = make(Transport.WEBSOCKET)
    assert not s.can_probe()
    with pytest.raises(RemoteProtocolError):
        s.start_probe()
    assert s.state is SessionState.OPEN
    assert s.transport is Transport.WEBSOCKET


def test_probe_on_a_closed_session_is_refused() -> None:
    s = closed_session()
    assert not s.can_probe()
    with pytest.raises(RemoteProtocolError):
        s.start_probe()


@pytest.mark.parametrize(
    "packet",
    [
        Packet(T.UPGRADE),  # 5 before 2probe
        Packet(T.PING),  # 2 without "probe"
        Packet(T.PING, "prob"),
        Packet(T.MESSAGE, "probe"),
        Packet(T.MESSAGE, b"probe"),
        Packet(T.PONG, "probe"),
        Packet(T.OPEN),
        Packet(T.CLOSE),
        Packet(T.NOOP),
    ],
)
def test_bad_first_probe_packet_is_refused_and_polling_carries_on(packet: Packet) -> None:
    s = make()
    s.start_probe()
    with pytest.raises(RemoteProtocolError):
        s.receive_probe(packet, T0 + 1)
    assert s.state is SessionState.OPEN
    assert s.transport is Transport.POLLING
    assert s.receive(Packet(T.MESSAGE, "still polling"), T0 + 2) == [Message("still polling")]


@pytest.mark.parametrize(
    "packet",
    [
        Packet(T.PING, "probe"),  # a second 2probe
        Packet(T.MESSAGE, "x"),
        Packet(T.PONG),
        Packet(T.CLOSE),
        Packet(T.NOOP),
    ],
)
def test_bad_packet_after_probe_is_refused_and_no_upgrade_happens(packet: Packet) -> None:
    s = upgrading()
    with pytest.raises(RemoteProtocolError):
        s.receive_probe(packet, T0 + 2)
    assert not s.closed
    assert s.transport is Transport.POLLING
    s.probe_failed()
    assert s.state is SessionState.OPEN
    assert s.transport is Transport.POLLING


def test_probe_failed_resumes_polling_and_no_second_probe() -> None:
    s = upgrading()
    s.probe_failed()
    assert s.state is SessionState.OPEN
    assert s.transport is Transport.POLLING
    assert s.receive(Packet(T.MESSAGE, "m"), T0 + 2) == [Message("m")]
    ping(s, T0 + INTERVAL)
    assert s.receive(Packet(T.PONG), T0 + INTERVAL + 1) == []
    assert s.next_deadline() == T0 + INTERVAL + 1 + INTERVAL
    # one probe per session
    assert not s.can_probe()
    with pytest.raises(RemoteProtocolError):
        s.start_probe()


def test_probe_failed_is_a_noop_outside_an_upgrade() -> None:
    s = make()
    s.probe_failed()
    assert s.state is SessionState.OPEN
    c = closed_session()
    c.probe_failed()
    assert c.state is SessionState.CLOSED
    assert c.next_deadline() is None


def test_close_during_upgrade() -> None:
    s = upgrading()
    assert s.close(disconnect.TRANSPORT_CLOSE) == [Closed(disconnect.TRANSPORT_CLOSE)]
    assert s.receive_probe(Packet(T.UPGRADE), T0 + 2) == []
    assert s.transport is Transport.POLLING
    assert s.next_deadline() is None


# -- close ----------------------------------------------------------------------------


def test_close_is_idempotent_and_keeps_the_first_reason() -> None:
    s = make()
    assert s.close(disconnect.SHUTDOWN) == [Closed(disconnect.SHUTDOWN)]
    assert s.close(disconnect.SHUTDOWN) == []
    assert s.close(disconnect.SLOW) == []
    assert s.close_reason == disconnect.SHUTDOWN
    assert s.state is SessionState.CLOSED


ALL_PACKETS = [Packet(t) for t in PacketType] + [
    Packet(T.PING, "probe"),
    Packet(T.MESSAGE, "x"),
    Packet(T.MESSAGE, b"x"),
]


@pytest.mark.parametrize("packet", ALL_PACKETS)
def test_everything_after_close_is_a_silent_noop(packet: Packet) -> None:
    s = closed_session()
    assert s.receive(packet, T0 + 1) == []
    assert s.receive_probe(packet, T0 + 1) == []
    assert s.on_deadline(T0 + 10_000) == []
    assert s.close(disconnect.NORMAL) == []
    assert s.next_deadline() is None
    assert s.close_reason == disconnect.SHUTDOWN


# -- property: arbitrary traffic ---------------------------------------------------------

packets = st.one_of(
    st.sampled_from(ALL_PACKETS),
    st.builds(
        Packet,
        st.sampled_from(list(PacketType)),
        st.one_of(st.text(max_size=8), st.binary(max_size=8)),
    ),
)
ops = st.one_of(
    st.tuples(st.just("receive"), packets, st.floats(0, 60)),
    st.tuples(st.just("probe"), packets, st.floats(0, 60)),
    st.tuples(st.just("deadline"), st.none(), st.floats(0, 60)),
    st.tuples(st.just("start_probe"), st.none(), st.floats(0, 60)),
    st.tuples(st.just("probe_failed"), st.none(), st.floats(0, 60)),
    st.tuples(st.just("close"), st.none(), st.floats(0, 60)),
)


@settings(max_examples=300, deadline=None)
@given(transport=st.sampled_from(list(Transport)), script=st.lists(ops, max_size=40))
def test_any_traffic_only_raises_remote_protocol_error_and_closed_is_final(
    transport: Transport, script: list[tuple[str, Packet | None, float]]
) -> None:
    s = make(transport)
    now = T0
    was_closed = False
    for op, packet, advance in script:
        now += advance
        try:
            if op == "receive":
                assert packet is not None
                events = s.receive(packet, now)
            elif op == "probe":
                assert packet is not None
                events = s.receive_probe(packet, now)
            elif op == "deadline":
                events = s.on_deadline(now)
            elif op == "start_probe":
                s.start_probe()
                events = []
            elif op == "probe_failed":
                s.probe_failed()
                events = []
            else:
                events = s.close(disconnect.SHUTDOWN)
        except RemoteProtocolError:
            events = []
            # start_probe refusals and probe-websocket errors do not need to close; on the main
            # transport an error always closes.
            if op == "receive":
                assert s.closed
        if was_closed:
            assert events == []
        closes = [e for e in events if isinstance(e, Closed)]
        assert len(closes) <= 1
        if closes:
            assert not was_closed
            assert s.closed and s.close_reason == closes[0].reason
        if s.closed:
            was_closed = True
            assert s.state is SessionState.CLOSED
            assert s.next_deadline() is None
        else:
            assert not was_closed, "a closed session reopened"
            # an open session always has its heartbeat armed
            assert s.next_deadline() is not None
