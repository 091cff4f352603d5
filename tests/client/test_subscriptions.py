"""Rooms and their positions, for resubscribe-and-recover (docs/protocol.md §1 and §3)."""

from __future__ import annotations

from typing import Any

import pytest

from roomcast.client.subscriptions import RoomState, Subscriptions
from roomcast.errors import RemoteProtocolError


def snapshot_reply(room: str, epoch: str = "E", offset: int = 42) -> dict[str, Any]:
    return {"room": room, "epoch": epoch, "offset": offset, "recovered": False, "snapshot": {"n": 3}}


def recovered_reply(room: str, epoch: str = "E", offset: int = 44) -> dict[str, Any]:
    return {
        "room": room,
        "epoch": epoch,
        "offset": offset,
        "recovered": True,
        "publications": [
            {"event": "msg", "data": ["x"], "offset": 43},
            {"event": "msg", "data": ["y"], "offset": 44},
        ],
    }


def test_first_subscribe_asks_for_a_snapshot() -> None:
    subs = Subscriptions()
    subs.add("chat")
    assert subs.subscribe_payload("chat") == {"room": "chat"}


def test_after_an_ack_and_events_a_resubscribe_presents_the_last_applied_position() -> None:
    subs = Subscriptions()
    subs.add("chat")
    state = subs.on_subscribed("chat", snapshot_reply("chat", "E", 42))
    assert state == RoomState("chat", "E", 42, False)
    assert subs.advance("chat", "E", 43)
    assert subs.advance("chat", "E", 44)
    # ... the connection drops; the reconnect loop resubscribes with:
    assert subs.subscribe_payload("chat") == {"room": "chat", "epoch": "E", "offset": 44}


def test_recovered_reply_position_is_after_its_publications() -> None:
    subs = Subscriptions()
    subs.add("chat")
    subs.on_subscribed("chat", snapshot_reply("chat", "E", 41))
    state = subs.on_subscribed("chat", recovered_reply("chat", "E", 44))
    assert state == RoomState("chat", "E", 44, True)
    # The replayed 43 and 44 came inside the reply; the same offsets arriving live are dups.
    assert not subs.advance("chat", "E", 44)
    assert subs.advance("chat", "E", 45)


def test_duplicate_and_stale_events_are_refused() -> None:
    subs = Subscriptions()
    subs.add("chat")
    subs.on_subscribed("chat", snapshot_reply("chat", "E", 10))
    assert not subs.advance("chat", "E", 10)  # the snapshot already reflects it
    assert not subs.advance("chat", "E", 3)
    assert subs.advance("chat", "E", 11)
    assert not subs.advance("chat", "E", 11)
    assert subs.get("chat") == RoomState("chat", "E", 11, False)


def test_a_new_epoch_restarts_the_position() -> None:
    subs = Subscriptions()
    subs.add("chat")
    subs.on_subscribed("chat", snapshot_reply("chat", "E", 500))
    # History was lost server-side; offsets start again in epoch F: lower is not older.
    assert subs.advance("chat", "F", 1)
    assert subs.get("chat") == RoomState("chat", "F", 1, False)
    assert not subs.advance("chat", "F", 1)
    assert subs.advance("chat", "F", 2)
    assert subs.subscribe_payload("chat") == {"room": "chat", "epoch": "F", "offset": 2}


def test_a_resubscribe_answered_in_another_epoch_replaces_the_position() -> None:
    subs = Subscriptions()
    subs.add("chat")
    subs.on_subscribed("chat", snapshot_reply("chat", "E", 900))
    state = subs.on_subscribed("chat", snapshot_reply("chat", "F", 7))
    assert state == RoomState("chat", "F", 7, False)
    assert subs.advance("chat", "F", 8)


def test_events_of_rooms_not_tracked_are_refused() -> None:
    subs = Subscriptions()
    assert not subs.advance("nowhere", "E", 1)
    subs.add("chat")
    subs.on_subscribed("chat", snapshot_reply("chat"))
    subs.remove("chat")
    assert not subs.advance("chat", "E", 43)  # still on the wire after unsubscribe
    assert "chat" not in subs


def test_events_before_the_first_ack_are_refused() -> None:
    subs = Subscriptions()
    subs.add("chat")
    assert not subs.advance("chat", "E", 5)
    assert subs.subscribe_payload("chat") == {"room": "chat"}


def test_add_is_idempotent_and_keeps_the_position() -> None:
    subs = Subscriptions()
    subs.add("chat")
    subs.on_subscribed("chat", snapshot_reply("chat", "E", 42))
    assert subs.add("chat") == RoomState("chat", "E", 42, False)
    assert len(subs) == 1


def test_remove_forgets_the_position_and_a_later_add_starts_afresh() -> None:
    subs = Subscriptions()
    subs.add("chat")
    subs.on_subscribed("chat", snapshot_reply("chat"))
    subs.remove("chat")
    subs.remove("chat")  # unknown: ignored
    subs.add("chat")
    assert subs.subscribe_payload("chat") == {"room": "chat"}


def test_an_unsubscribe_racing_the_subscribe_ack_does_not_resurrect_the_room() -> None:
    subs = Subscriptions()
    subs.add("chat")
    subs.remove("chat")
    state = subs.on_subscribed("chat", snapshot_reply("chat"))
    assert state.epoch == "E"
    assert "chat" not in subs and len(subs) == 0
    assert not subs.advance("chat", "E", 43)


def test_resubscribe_order_is_the_order_rooms_were_added() -> None:
    subs = Subscriptions()
    for room in ("b", "a", "c", "a"):
        subs.add(room)
    assert [s.room for s in subs] == ["b", "a", "c"]
    assert "a" in subs and "z" not in subs and 3 not in subs


def test_iterating_while_removing_is_safe() -> None:
    subs = Subscriptions()
    for room in ("a", "b", "c"):
        subs.add(room)
    for state in subs:
        subs.remove(state.room)
    assert len(subs) == 0


def test_states_handed_out_do_not_change_later() -> None:
    subs = Subscriptions()
    subs.add("chat")
    before = subs.on_subscribed("chat", snapshot_reply("chat", "E", 1))
    subs.advance("chat", "E", 2)
    assert before.offset == 1
    assert before.positioned
    assert not RoomState("x").positioned


def test_payload_for_an_untracked_room_is_a_bug() -> None:
    with pytest.raises(KeyError):
        Subscriptions().subscribe_payload("chat")


@pytest.mark.parametrize(
    "reply",
    [
        {"room": "other", "epoch": "E", "offset": 1, "recovered": False},
        {"room": "chat", "offset": 1, "recovered": False},
        {"room": "chat", "epoch": 5, "offset": 1, "recovered": False},
        {"room": "chat", "epoch": "E", "offset": "1", "recovered": False},
        {"room": "chat", "epoch": "E", "offset": True, "recovered": False},
        {"room": "chat", "epoch": "E", "offset": -1, "recovered": False},
        {"room": "chat", "epoch": "E", "offset": 1},
        {"room": "chat", "epoch": "E", "offset": 1, "recovered": "yes"},
        {"error": "not allowed to subscribe 'chat'"},
    ],
)
def test_malformed_replies_are_protocol_errors_and_keep_the_old_position(
    reply: dict[str, Any],
) -> None:
    subs = Subscriptions()
    subs.add("chat")
    subs.on_subscribed("chat", snapshot_reply("chat", "E", 42))
    with pytest.raises(RemoteProtocolError):
        subs.on_subscribed("chat", reply)
    assert subs.get("chat") == RoomState("chat", "E", 42, False)
