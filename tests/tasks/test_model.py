"""tasks.model: the transition table, progress rules, immutability, JSON, event and room names."""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roomcast import _json, errors
from roomcast.errors import InvalidProgress, InvalidTransition, RoomcastError, TaskError
from roomcast.tasks.model import (
    DEFAULT_EVENTS,
    LIST_ROOM,
    TERMINAL,
    TRANSITIONS,
    Task,
    TaskEvents,
    TaskStatus,
    can_transition,
    event_for,
    kind_room,
    owner_room,
    task_room,
)

S = TaskStatus

# The table as the design states it, written out independently of the module under test.
LEGAL = {
    (S.PENDING, S.RUNNING),
    (S.PENDING, S.CANCELLED),
    (S.PENDING, S.FAILED),
    (S.PENDING, S.TIMED_OUT),
    (S.RUNNING, S.STOPPING),
    (S.RUNNING, S.COMPLETED),
    (S.RUNNING, S.FAILED),
    (S.RUNNING, S.TIMED_OUT),
    (S.RUNNING, S.CANCELLED),
    (S.STOPPING, S.CANCELLED),
    (S.STOPPING, S.COMPLETED),
    (S.STOPPING, S.FAILED),
    (S.STOPPING, S.TIMED_OUT),
}
ALL_PAIRS = list(itertools.product(TaskStatus, TaskStatus))


def new(task_id: str = "t1", **kw: Any) -> Task:
    return Task.new(task_id, "crawl", now=1.0, **kw)


def apply(task: Task, target: TaskStatus, now: float = 9.0) -> Task:
    """Ask ``task`` to become ``target`` through the one method that does that."""
    if target is S.RUNNING:
        return task.start(now)
    if target is S.STOPPING:
        return task.request_stop(now)
    if target is S.CANCELLED:
        return task.cancel(now, "asked")
    if target is S.COMPLETED:
        return task.complete(now, {"pages": 3})
    if target is S.FAILED:
        return task.fail(now, "boom")
    if target is S.TIMED_OUT:
        return task.time_out(now)
    raise AssertionError(f"no method leads to {target}")


def task_in(status: TaskStatus) -> Task:
    """A task that reached ``status`` by legal steps."""
    task = new()
    if status is S.PENDING:
        return task
    task = task.start(2.0)
    if status is S.RUNNING:
        return task
    if status is S.STOPPING:
        return task.request_stop(3.0)
    return apply(task, status, now=4.0)


# -- the table --------------------------------------------------------------------------------


def test_terminal_is_exactly_the_four_end_states() -> None:
    assert TERMINAL == {S.CANCELLED, S.COMPLETED, S.FAILED, S.TIMED_OUT}
    for status in TERMINAL:
        assert TRANSITIONS[status] == frozenset()


def test_table_covers_every_status() -> None:
    assert set(TRANSITIONS) == set(TaskStatus)


@pytest.mark.parametrize(("current", "target"), ALL_PAIRS, ids=lambda s: s.value)
def test_can_transition_matches_the_design(current: TaskStatus, target: TaskStatus) -> None:
    assert can_transition(current, target) is ((current, target) in LEGAL)


LEGAL_BY_METHOD = sorted(LEGAL)
ILLEGAL_BY_METHOD = [(a, b) for a, b in ALL_PAIRS if (a, b) not in LEGAL and b is not S.PENDING]


@pytest.mark.parametrize(("current", "target"), LEGAL_BY_METHOD, ids=lambda s: s.value)
def test_every_legal_transition_returns_a_new_task(current: TaskStatus, target: TaskStatus) -> None:
    before = task_in(current)
    after = apply(before, target, now=9.0)
    assert after.status is target
    assert after.updated_at == 9.0
    assert before.status is current  # untouched
    assert after.is_terminal is (target in TERMINAL)
    assert after.finished_at == (9.0 if target in TERMINAL else None)
    assert after.id == before.id and after.created_at == before.created_at


@pytest.mark.parametrize(("current", "target"), ILLEGAL_BY_METHOD, ids=lambda s: s.value)
def test_every_illegal_transition_raises(current: TaskStatus, target: TaskStatus) -> None:
    before = task_in(current)
    with pytest.raises(InvalidTransition) as info:
        apply(before, target)
    assert str(info.value) == f"task t1 is {current.value}; it cannot become {target.value}"
    assert (info.value.task_id, info.value.current, info.value.target) == (
        "t1",
        current.value,
        target.value,
    )


def test_nothing_leads_back_to_pending() -> None:
    assert not any(can_transition(status, S.PENDING) for status in TaskStatus)


def test_repeated_terminal_event_is_refused_and_recognisable() -> None:
    done = task_in(S.COMPLETED)
    with pytest.raises(InvalidTransition) as info:
        done.complete(10.0, {"other": 1})
    # What a caller uses to make the repeat a no-op without parsing the message.
    assert info.value.current == info.value.target == "completed"


def test_messages_read_naturally() -> None:
    with pytest.raises(InvalidTransition, match=r"^task t1 is completed; it cannot become running$"):
        task_in(S.COMPLETED).start(5.0)


def test_error_tree() -> None:
    for cls in (errors.InvalidTransition, errors.TaskNotFound, errors.InvalidProgress):
        assert issubclass(cls, TaskError)
        assert cls.__name__ in errors.__all__
    assert issubclass(TaskError, RoomcastError)
    assert "TaskError" in errors.__all__
    missing = errors.TaskNotFound("t9")
    assert missing.task_id == "t9" and "t9" in str(missing)


# -- what each change sets --------------------------------------------------------------------


def test_new_task_is_pending_with_equal_timestamps() -> None:
    task = Task.new("t1", "crawl", now=5.0, title="Crawl", owner="u1", deadline=65.0, metadata={"a": 1})
    assert task.status is S.PENDING
    assert (task.created_at, task.updated_at, task.started_at, task.finished_at) == (5.0, 5.0, None, None)
    assert (task.title, task.owner, task.deadline, task.metadata) == ("Crawl", "u1", 65.0, {"a": 1})
    assert task.progress is None and task.result is None and task.error is None


def test_new_copies_metadata() -> None:
    meta = {"a": 1}
    task = Task.new("t1", "k", now=1.0, metadata=meta)
    meta["a"] = 2
    assert task.metadata == {"a": 1}


def test_start_sets_started_at() -> None:
    assert task_in(S.PENDING).start(2.5).started_at == 2.5


def test_complete_sets_result_and_full_progress() -> None:
    done = task_in(S.RUNNING).progress_to(3.0, 40).complete(4.0, [1, "two", None])
    assert (done.status, done.result, done.progress, done.finished_at) == (S.COMPLETED, [1, "two", None], 100.0, 4.0)
    assert done.error is None


def test_complete_refuses_a_result_json_cannot_carry() -> None:
    with pytest.raises(TaskError, match="result"):
        task_in(S.RUNNING).complete(4.0, {"when": object()})


def test_new_refuses_metadata_json_cannot_carry() -> None:
    with pytest.raises(TaskError, match="metadata"):
        Task.new("t1", "k", now=1.0, metadata={"x": {1, 2}})


def test_fail_and_time_out_set_error() -> None:
    assert task_in(S.RUNNING).fail(5.0, "disk full").error == "disk full"
    assert task_in(S.PENDING).time_out(5.0).error == "deadline exceeded"
    assert task_in(S.STOPPING).time_out(5.0, "too slow").error == "too slow"


def test_cancel_reason_becomes_message_or_keeps_the_last_one() -> None:
    running = task_in(S.RUNNING).progress_to(3.0, message="page 3")
    assert running.cancel(4.0, "stopped by alice").message == "stopped by alice"
    assert running.cancel(4.0).message == "page 3"
    assert running.cancel(4.0).error is None


def test_request_stop_keeps_progress() -> None:
    stopping = task_in(S.RUNNING).progress_to(3.0, 30, "fetch").request_stop(4.0)
    assert (stopping.status, stopping.progress, stopping.step, stopping.finished_at) == (
        S.STOPPING,
        30.0,
        "fetch",
        None,
    )


def test_is_overdue() -> None:
    task = Task.new("t1", "k", now=1.0, deadline=10.0)
    assert not task.is_overdue(9.99)
    assert task.is_overdue(10.0)
    assert not task.start(2.0).complete(3.0).is_overdue(11.0)
    assert not new().is_overdue(1e12)


# -- progress ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 0.0, 1e-9, 42, 50.5, 99.999, 100, 100.0])
def test_progress_accepts_0_to_100(value: float) -> None:
    task = task_in(S.RUNNING).progress_to(3.0, value)
    assert task.progress == value
    assert type(task.progress) is float


@pytest.mark.parametrize(
    "value",
    [math.nan, math.inf, -math.inf, -1, -0.0001, 100.0001, 101, 1e300, True, "50"],
    ids=repr,
)
def test_progress_rejects_out_of_range_and_non_numbers(value: Any) -> None:
    running = task_in(S.RUNNING)
    with pytest.raises(InvalidProgress):
        running.progress_to(3.0, value)


def test_progress_none_fields_keep_their_values() -> None:
    task = task_in(S.RUNNING).progress_to(3.0, 10, "fetch", "page 1")
    assert (task.progress, task.step, task.message) == (10.0, "fetch", "page 1")
    task = task.progress_to(4.0, step="parse")
    assert (task.progress, task.step, task.message, task.updated_at) == (10.0, "parse", "page 1", 4.0)
    task = task.progress_to(5.0, 5)  # may go down: producers re-estimate
    assert (task.progress, task.step, task.message) == (5.0, "parse", "page 1")


def test_progress_while_stopping_is_allowed() -> None:
    task = task_in(S.STOPPING).progress_to(5.0, 90, "cleanup")
    assert (task.status, task.progress, task.step) == (S.STOPPING, 90.0, "cleanup")


@pytest.mark.parametrize("status", [S.PENDING, *sorted(TERMINAL)], ids=lambda s: s.value)
def test_progress_outside_running_or_stopping_is_refused(status: TaskStatus) -> None:
    with pytest.raises(InvalidTransition) as info:
        task_in(status).progress_to(5.0, 10)
    assert str(info.value) == f"task t1 is {status.value}; it cannot report progress"
    assert info.value.target is None


def test_constructor_checks_progress_and_times() -> None:
    with pytest.raises(InvalidProgress):
        Task(id="t1", kind="k", created_at=1.0, updated_at=1.0, progress=-5.0)
    with pytest.raises(TaskError, match="created_at"):
        Task(id="t1", kind="k", created_at=math.nan, updated_at=1.0)
    with pytest.raises(TaskError, match="deadline"):
        Task(id="t1", kind="k", created_at=1.0, updated_at=1.0, deadline=math.inf)
    with pytest.raises(TaskError, match="id"):
        Task(id="", kind="k", created_at=1.0, updated_at=1.0)


# -- immutability -----------------------------------------------------------------------------


def test_task_is_frozen_and_slotted() -> None:
    task = new()
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.status = S.RUNNING  # type: ignore[misc]
    assert not hasattr(task, "__dict__")


def test_every_change_leaves_the_original_alone() -> None:
    original = new(metadata={"a": 1})
    snapshot = original.to_json()
    running = original.start(2.0)
    running.progress_to(3.0, 50, "s", "m").request_stop(4.0).cancel(5.0, "r")
    running.complete(3.0, {"r": 1})
    running.fail(3.0, "e")
    original.time_out(3.0)
    assert original.to_json() == snapshot


def test_to_json_hands_out_a_copy_of_metadata() -> None:
    task = new(metadata={"a": 1})
    task.to_json()["metadata"]["a"] = 2
    assert task.metadata == {"a": 1}


def test_task_with_json_containers_is_hashable() -> None:
    done = task_in(S.RUNNING).complete(3.0, {"a": [1]})
    assert isinstance(hash(done), int)


# -- JSON -------------------------------------------------------------------------------------

finite = st.floats(allow_nan=False, allow_infinity=False)
times = st.floats(min_value=0, max_value=4e9, allow_nan=False)
opt_text = st.none() | st.text(max_size=20)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1) | finite | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)

tasks = st.builds(
    Task,
    id=st.text(min_size=1, max_size=20),
    kind=st.text(max_size=10),
    title=st.text(max_size=20),
    owner=opt_text,
    status=st.sampled_from(TaskStatus),
    progress=st.none() | st.floats(min_value=0, max_value=100),
    step=opt_text,
    message=opt_text,
    result=json_values,
    error=opt_text,
    created_at=times,
    updated_at=times,
    started_at=st.none() | times,
    finished_at=st.none() | times,
    deadline=st.none() | times,
    metadata=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
)


@given(tasks)
def test_json_round_trip_through_the_wire(task: Task) -> None:
    wire = _json.dumps(task.to_json())
    again = Task.from_json(_json.loads(wire))
    assert again == task
    assert again.to_json() == task.to_json()
    assert task.snapshot() == task.to_json()


def test_to_json_shape() -> None:
    data = task_in(S.RUNNING).to_json()
    assert data["status"] == "running" and type(data["status"]) is str
    assert set(data) == {
        "id", "kind", "title", "owner", "status", "progress", "step", "message", "result",
        "error", "created_at", "updated_at", "started_at", "finished_at", "deadline", "metadata",
    }  # fmt: skip


def test_from_json_fills_defaults_and_ignores_unknown_keys() -> None:
    task = Task.from_json({"id": "t1", "kind": "k", "status": "running", "created_at": 3, "future": 1})
    assert task == Task(id="t1", kind="k", status=S.RUNNING, created_at=3.0, updated_at=3.0)
    assert type(task.created_at) is float


GOOD = {"id": "t1", "kind": "k", "status": "pending", "created_at": 1.0}


@pytest.mark.parametrize(
    ("patch", "match"),
    [
        ({"id": None}, "id"),
        ({"id": ""}, "id"),
        ({"id": 5}, "id"),
        ({"kind": None}, "kind"),
        ({"status": "paused"}, "status"),
        ({"status": None}, "status"),
        ({"created_at": None}, "created_at"),
        ({"created_at": "yesterday"}, "created_at"),
        ({"created_at": True}, "created_at"),
        ({"created_at": math.nan}, "created_at"),
        ({"updated_at": "x"}, "updated_at"),
        ({"deadline": [1]}, "deadline"),
        ({"owner": 7}, "owner"),
        ({"title": 7}, "title"),
        ({"error": {}}, "error"),
        ({"metadata": [1]}, "metadata"),
        ({"metadata": "x"}, "metadata"),
        ({"progress": "50"}, "progress"),
        ({"progress": 150}, "progress"),
    ],
    ids=repr,
)
def test_from_json_rejects_bad_input(patch: dict[str, Any], match: str) -> None:
    with pytest.raises(TaskError, match=match):
        Task.from_json({**GOOD, **patch})


def test_from_json_out_of_range_progress_is_invalid_progress() -> None:
    with pytest.raises(InvalidProgress):
        Task.from_json({**GOOD, "progress": -1})


@pytest.mark.parametrize("data", [None, [], "task", 3], ids=repr)
def test_from_json_rejects_non_objects(data: object) -> None:
    with pytest.raises(TaskError, match="JSON object"):
        Task.from_json(data)


# -- event and room names ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new_status", "expected"),
    [
        (None, S.PENDING, "task:created"),
        (None, S.RUNNING, "task:created"),
        (S.PENDING, S.RUNNING, "task:updated"),
        (S.PENDING, S.PENDING, "task:updated"),
        (S.RUNNING, S.RUNNING, "task:progress"),
        (S.STOPPING, S.STOPPING, "task:progress"),
        (S.RUNNING, S.STOPPING, "task:stopping"),
        (S.RUNNING, S.CANCELLED, "task:cancelled"),
        (S.STOPPING, S.CANCELLED, "task:cancelled"),
        (S.PENDING, S.CANCELLED, "task:cancelled"),
        (S.RUNNING, S.COMPLETED, "task:completed"),
        (S.STOPPING, S.COMPLETED, "task:completed"),
        (S.PENDING, S.FAILED, "task:failed"),
        (S.RUNNING, S.FAILED, "task:failed"),
        (S.RUNNING, S.TIMED_OUT, "task:timed_out"),
        (S.PENDING, S.TIMED_OUT, "task:timed_out"),
    ],
    ids=str,
)
def test_event_for(old: TaskStatus | None, new_status: TaskStatus, expected: str) -> None:
    assert event_for(old, new_status) == expected
    assert event_for(old, new_status, DEFAULT_EVENTS) == expected


def test_every_terminal_status_has_its_own_event() -> None:
    names = {event_for(S.RUNNING, status) for status in TERMINAL}
    assert len(names) == len(TERMINAL)
    assert DEFAULT_EVENTS.updated not in names


def test_aliasing_is_a_different_task_events() -> None:
    crawl = TaskEvents(progress="crawl_progress", stopping="crawl:stopping", cancelled="crawl:stopped")
    assert event_for(S.RUNNING, S.RUNNING, crawl) == "crawl_progress"
    assert event_for(S.RUNNING, S.STOPPING, crawl) == "crawl:stopping"
    assert event_for(S.STOPPING, S.CANCELLED, crawl) == "crawl:stopped"
    # Everything not aliased keeps the default name.
    assert event_for(None, S.PENDING, crawl) == "task:created"
    assert event_for(S.RUNNING, S.COMPLETED, crawl) == "task:completed"
    # The default instance is untouched.
    assert event_for(S.RUNNING, S.RUNNING) == "task:progress"


def test_task_events_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_EVENTS.progress = "x"  # type: ignore[misc]


def test_room_names() -> None:
    assert task_room("t1") == "task:t1"
    assert LIST_ROOM == "tasks"
    assert kind_room("crawl") == "tasks:kind:crawl"
    assert owner_room("u1") == "tasks:owner:u1"


# -- event aliases from configuration -----------------------------------------------------------


def test_parse_event_aliases_builds_one_taskevents_per_kind_keeping_unnamed_defaults() -> None:
    from roomcast.tasks.model import DEFAULT_EVENTS, parse_event_aliases

    parsed = parse_event_aliases(
        ["crawl.progress=crawl_progress", "crawl.cancelled = crawl:stopped", "ai.gen.completed=generation_done"]
    )
    assert parsed["crawl"].progress == "crawl_progress" and parsed["crawl"].cancelled == "crawl:stopped"
    assert parsed["crawl"].completed == DEFAULT_EVENTS.completed
    assert parsed["ai.gen"].completed == "generation_done"  # a kind may contain dots: the last one splits
    assert parse_event_aliases([]) == {}


@pytest.mark.parametrize(
    "spec", ["crawl_progress", "crawl.progress", "progress=x", "crawl.progress=", "crawl.speed=x", ".progress=x"]
)
def test_parse_event_aliases_refuses_bad_specs_with_the_expected_form(spec: str) -> None:
    from roomcast.tasks.model import parse_event_aliases

    with pytest.raises(TaskError, match="KIND.EVENT=NAME|EVENT must be one of"):
        parse_event_aliases([spec])
