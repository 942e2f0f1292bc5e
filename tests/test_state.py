"""The state file: locking, atomic writes, corrupt and future files, pruning, concurrency."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
import time

import pytest

from hpc_bridge.errors import StateError
from hpc_bridge.files import write_atomically
from hpc_bridge.state import StateStore
from hpc_bridge.state_records import ACCEPTED, DONE, FAILED, PENDING, SCHEMA_VERSION, State


def store(tmp_path, **kw) -> StateStore:
    return StateStore(tmp_path / "state" / "state.json", **kw)


def test_missing_file_is_empty_and_first_write_creates_private_dir(tmp_path):
    s = store(tmp_path)
    assert s.read().operations == {}
    with s.transaction() as state:
        state.begin("create", ["a-1"], "r1", now=100.0, deadline=200.0, request={"sets": []})
    assert stat.S_IMODE(os.stat(tmp_path / "state").st_mode) == 0o700
    data = json.loads((tmp_path / "state" / "state.json").read_text())
    assert data["version"] == SCHEMA_VERSION and data["operations"][0]["request_id"] == "r1"
    assert data["operations"][0]["outcome"] == PENDING


def test_recorded_then_settled_round_trips(tmp_path):
    s = store(tmp_path)
    with s.transaction(now=100.0) as state:
        state.begin("create", ["a-1", "a-2"], "r1", now=100.0, deadline=200.0)
    with s.transaction(now=101.0) as state:
        op = state.operations["r1"]
        op.outcome, op.operation_id = ACCEPTED, "op-9"
    op = s.read().operations["r1"]
    assert (op.outcome, op.operation_id, op.nodes) == (ACCEPTED, "op-9", ["a-1", "a-2"])
    assert s.read().resume_in_flight(150.0).keys() == {"a-1", "a-2"}
    assert s.read().resume_in_flight(250.0) == {}  # past its deadline


def test_later_suspend_supersedes_a_create_claim(tmp_path):
    state = State()
    state.begin("create", ["a-1"], "r1", now=100.0, deadline=1000.0)
    state.begin("terminate", ["a-1"], "r2", now=110.0, deadline=1000.0)
    assert state.resume_in_flight(120.0) == {}


def test_corrupt_file_is_moved_aside_not_fatal(tmp_path, caplog):
    import logging

    logger = logging.getLogger("hpc_bridge")
    logger.addHandler(caplog.handler)  # in-process CLI tests may have turned propagation off
    try:
        _corrupt_file_is_moved_aside(tmp_path, caplog)
    finally:
        logger.removeHandler(caplog.handler)


def _corrupt_file_is_moved_aside(tmp_path, caplog):
    s = store(tmp_path)
    s.path.parent.mkdir(parents=True)
    s.path.write_text('{"version": 1, "operations": [{"request_id": ')  # truncated
    with s.transaction() as state:
        assert state.operations == {}
        state.begin("create", ["a-1"], "r1", now=1.0, deadline=2.0)
    aside = [p for p in s.path.parent.iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1 and aside[0].read_text().startswith('{"version": 1')
    assert "STATE FILE CORRUPT" in caplog.text


def test_future_schema_is_refused_and_left_untouched(tmp_path):
    s = store(tmp_path)
    s.path.parent.mkdir(parents=True)
    text = json.dumps({"version": SCHEMA_VERSION + 1, "operations": []})
    s.path.write_text(text)
    with pytest.raises(StateError, match="newer than this hpc-bridge"):
        with s.transaction():
            pass
    assert s.path.read_text() == text


def test_lock_wait_is_bounded_with_a_clear_error(tmp_path):
    s = store(tmp_path, lock_timeout=0.2)
    other = store(tmp_path, lock_timeout=0.2)
    with s.locked():
        with pytest.raises(StateError, match="locked by another hpc-bridge process"):
            with other.transaction():
                pass


def test_symlinked_lock_file_cannot_clobber_another_file(tmp_path):
    s = store(tmp_path)
    s.path.parent.mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    os.symlink(victim, s.lock_path)
    with pytest.raises(StateError):
        with s.transaction():
            pass
    assert victim.read_text() == "precious"


def test_prune_keeps_open_operations_and_drops_old_closed_ones():
    state = State()
    old = state.begin("create", ["a"], "old", now=0.0, deadline=10.0)
    old.close(DONE, 5.0)
    state.begin("create", ["b"], "open", now=0.0, deadline=10.0)
    recent = state.begin("start", ["c"], "recent", now=990.0, deadline=1000.0)
    recent.close(DONE, 995.0)
    assert [op.request_id for op in state.prune(now=1000.0, retention=100.0)] == ["old"]
    assert set(state.operations) == {"open", "recent"}


def test_closed_record_stays_while_an_open_one_shares_a_node():
    """It is what marks the older open record superseded (latest_by_node)."""
    state = State()
    state.begin("create", ["a", "b"], "create", now=0.0, deadline=5000.0)
    intent = state.begin("shutdown", ["a"], "intent", now=10.0, deadline=10.0)
    intent.close(DONE, 10.0)
    assert state.prune(now=1000.0, retention=100.0, keep_closed=60.0) == []
    assert state.resume_in_flight(1000.0).keys() == {"b"}
    state.operations["create"].close(DONE, 1001.0)
    assert [op.request_id for op in state.prune(now=1050.0, retention=100.0, keep_closed=60.0)] == ["intent"]


def test_accepted_and_closed_records_drop_their_request_body():
    state = State()
    accepted = state.begin("create", ["a"], "r1", now=0.0, deadline=10.0, request={"sets": [{"count": 1}]})
    closed = state.begin("terminate", ["b"], "r2", now=0.0, deadline=10.0, request={"names": ["b"]})
    pending = state.begin("start", ["c"], "r3", now=0.0, deadline=10.0, request={"ids": ["x"]})
    accepted.accept("op-1")
    closed.close(FAILED, 1.0, "refused")
    assert (accepted.request, accepted.outcome, accepted.operation_id) == (None, "accepted", "op-1")
    assert closed.request is None
    assert pending.request == {"ids": ["x"]}  # a pending call may still be re-sent as it was


def test_closed_operations_move_to_the_history_file(tmp_path):
    store = StateStore(tmp_path / "state.json", keep_closed=60.0)
    with store.transaction(now=0.0) as state:
        state.begin("create", ["a"], "done", now=0.0, deadline=10.0, request={"sets": []}).close(DONE, 5.0, "Ready")
        state.begin("create", ["b"], "open", now=0.0, deadline=10.0)
    assert store.history() == [] and set(store.read().operations) == {"done", "open"}
    with store.transaction(now=100.0):
        pass
    assert set(store.read().operations) == {"open"}
    [moved] = store.history()
    assert (moved.request_id, moved.outcome, moved.message, moved.nodes) == ("done", DONE, "Ready", ["a"])
    assert store.history_path == tmp_path / "state.history.jsonl"
    assert store.history_path.stat().st_mode & 0o777 == 0o600
    # a second move appends
    with store.transaction(now=100.0) as state:
        state.operations["open"].close(FAILED, 100.0)
    with store.transaction(now=200.0):
        pass
    assert [op.request_id for op in store.history()] == ["done", "open"] and store.read().operations == {}


def test_unwritable_history_keeps_closed_operations_in_the_state_file(tmp_path):
    store = StateStore(tmp_path / "state.json", keep_closed=60.0)
    store.history_path.mkdir()  # not a file: appending fails
    with store.transaction(now=0.0) as state:
        state.begin("create", ["a"], "done", now=0.0, deadline=10.0).close(DONE, 5.0)
    with store.transaction(now=100.0):
        pass
    assert set(store.read().operations) == {"done"}


def _hammer(path: str, worker: int, count: int) -> None:
    s = StateStore(path, lock_timeout=60)
    for i in range(count):
        with s.transaction() as state:
            state.begin("create", [f"w{worker}-{i}"], f"w{worker}-{i}", now=1.0 + i, deadline=1e12)


def test_concurrent_processes_lose_no_record(tmp_path):
    path = str(tmp_path / "state" / "state.json")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(path, w, 15)) for w in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    ops = StateStore(path).read().operations
    assert len(ops) == 6 * 15


def test_unknown_fields_from_a_newer_release_are_ignored_not_corrupt(tmp_path):
    s = store(tmp_path)
    s.path.parent.mkdir(parents=True)
    record = {"request_id": "r1", "action": "create", "nodes": ["a-1"], "started": 1.0, "deadline": 2.0,
              "outcome": "pending", "added_later": {"x": 1}}
    s.path.write_text(json.dumps({"version": SCHEMA_VERSION, "operations": [record], "cooloffs": {},
                                  "future_table": {}}))
    assert s.read().operations["r1"].nodes == ["a-1"]
    assert not [p for p in s.path.parent.iterdir() if ".corrupt-" in p.name]


def test_history_symlink_is_not_followed(tmp_path):
    """A symlink planted as the history file cannot make a hook append to another file."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    store = StateStore(tmp_path / "state" / "state.json", keep_closed=60.0)
    with store.transaction(now=0.0) as state:
        state.begin("create", ["a"], "done", now=0.0, deadline=10.0).close(DONE, 5.0)
    store.history_path.symlink_to(victim)
    with store.transaction(now=100.0):
        pass
    assert victim.read_text() == "precious\n"
    assert set(store.read().operations) == {"done"}  # kept, not lost


def _closed_once(store: StateStore, rid: str, now: float) -> None:
    with store.transaction(now=now) as state:
        state.begin("create", [rid], rid, now=now, deadline=now + 1.0).close(DONE, now + 2.0)


def test_history_survives_a_torn_line_repeats_and_bad_records(tmp_path):
    store = StateStore(tmp_path / "state.json", keep_closed=60.0)
    _closed_once(store, "r1", 0.0)
    with store.transaction(now=100.0):
        pass
    # a crash mid-append left half a line; another left a record twice; a hand edit, bad types
    with open(store.history_path, "a") as fh:
        fh.write('{"request_id":"r1","action":"create","nodes":["r1"],"started":0.0,"deadline":1.0}\n')
        fh.write('{"request_id":"bad","action":"create","nodes":["x"],"started":"x","deadline":1.0}\n')
        fh.write('{"request_id":"torn","action":"cr')
    _closed_once(store, "r2", 100.0)
    with store.transaction(now=200.0):
        pass
    assert [op.request_id for op in store.history()] == ["r1", "r2"]


def test_unwritable_history_still_honours_the_retention(tmp_path):
    store = StateStore(tmp_path / "state.json", keep_closed=60.0, retention=1000.0)
    store.history_path.mkdir()
    _closed_once(store, "r1", 0.0)
    with store.transaction(now=500.0):
        pass
    assert set(store.read().operations) == {"r1"}  # kept: the history cannot take it
    with store.transaction(now=2000.0):
        pass
    assert store.read().operations == {}  # but not past the retention


def test_history_fifo_does_not_block_the_lock_holder(tmp_path):
    store = StateStore(tmp_path / "state.json", keep_closed=60.0)
    os.mkfifo(store.history_path)
    _closed_once(store, "r1", 0.0)
    with store.transaction(now=100.0):  # returns: O_NONBLOCK, and a FIFO is not a history file
        pass
    assert set(store.read().operations) == {"r1"}


def test_closed_record_stays_until_keep_closed_past_its_deadline():
    state = State()
    state.begin("create", ["a"], "r", now=0.0, deadline=1000.0).close(FAILED, 1.0)
    assert state.prune(now=500.0, retention=1e6, keep_closed=60.0) == []  # repair still looks at it
    assert [op.request_id for op in state.prune(now=1061.0, retention=1e6, keep_closed=60.0)] == ["r"]


def test_temp_file_of_a_killed_writer_is_removed_by_the_next_one(tmp_path):
    store = StateStore(tmp_path / "state.json")
    leftover = tmp_path / ".state.json.k1ll3d"
    leftover.write_text('{"version": 1, "operations": [')
    other = tmp_path / ".statefile-not-ours"
    other.write_text("keep")
    with store.transaction(now=0.0) as state:
        state.begin("create", ["a"], "r1", now=0.0, deadline=10.0)
    assert not leftover.exists() and other.exists()
    assert set(store.read().operations) == {"r1"}


@pytest.mark.parametrize("body", [
    {"version": 1, "operations": "nope"},
    {"version": 1, "operations": [], "cooloffs": []},
    {"version": 1, "operations": [], "down_reasons": []},
    {"version": 1, "operations": [{"request_id": "r", "action": "create", "nodes": 3, "started": 0, "deadline": 1}]},
    {"version": 1, "operations": [{"request_id": "r", "action": "create", "nodes": [], "started": "x", "deadline": 1}]},
])
def test_state_file_of_the_wrong_shape_is_moved_aside_like_garbage(tmp_path, body):
    path = tmp_path / "state.json"
    path.write_text(json.dumps(body))
    store = StateStore(path)
    with store.transaction() as state:
        assert state.operations == {}
    assert len(list(tmp_path.glob("state.json.corrupt-*"))) == 1


def _take_and_record(lock_path: str, out: str, tag: str) -> None:
    from hpc_bridge import flock

    with flock.exclusive(lock_path, 60):
        with open(out, "a") as fh:
            fh.write(tag + "\n")


def test_lock_is_handed_to_the_waiter_not_taken_again_by_its_releaser(tmp_path):
    # the unfair pattern of a polling lock: a process releasing and at once re-taking the lock
    # while another waits. Here the waiter (in the queue first) goes first.
    from hpc_bridge import flock

    lock_path, out = str(tmp_path / "x.lock"), str(tmp_path / "order")
    ctx = multiprocessing.get_context("spawn")
    with flock.exclusive(lock_path, 5):
        waiter = ctx.Process(target=_take_and_record, args=(lock_path, out, "waiter"))
        waiter.start()
        for _ in range(6000):  # until the waiter took its ticket, behind ours
            if open(lock_path + ".tail").read() == "2":
                break
            time.sleep(0.01)
        else:
            raise AssertionError("the waiter never queued")
    with flock.exclusive(lock_path, 60):  # released above, asked for again at once
        with open(out, "a") as fh:
            fh.write("releaser\n")
    waiter.join(60)
    assert waiter.exitcode == 0
    assert open(out).read().split() == ["waiter", "releaser"]


def _queue_and_record(lock_path: str, out: str, tag: str, hold: float) -> None:
    from hpc_bridge import flock

    with flock.exclusive(lock_path, 60):
        with open(out, "a") as fh:
            fh.write(tag + "\n")
        time.sleep(hold)


def test_waiters_take_the_lock_in_the_order_they_came_and_one_dead_in_line_is_skipped(tmp_path):
    from hpc_bridge import flock

    lock_path, out = str(tmp_path / "x.lock"), str(tmp_path / "order")
    ctx = multiprocessing.get_context("spawn")
    procs = []
    with flock.exclusive(lock_path, 5):
        for i in range(5):
            p = ctx.Process(target=_queue_and_record, args=(lock_path, out, f"w{i}", 0.0))
            p.start()
            procs.append(p)
            for _ in range(6000):  # each in line before the next starts
                if open(lock_path + ".tail").read() == str(i + 2):
                    break
                time.sleep(0.01)
            else:
                raise AssertionError(f"w{i} never queued")
        procs[2].kill()  # dies waiting: the one behind it must not wait for it forever
        procs[2].join(30)
    for p in procs:
        p.join(60)
    assert open(out).read().split() == ["w0", "w1", "w3", "w4"]
    assert len([p for p in os.listdir(tmp_path) if ".q" in p]) <= 2  # queue files are removed behind


def test_lock_wait_is_bounded_outside_the_main_thread_too(tmp_path):
    import threading

    s = store(tmp_path, lock_timeout=0.2)
    errors = []

    def other():
        try:
            with store(tmp_path, lock_timeout=0.2).transaction():
                pass
        except StateError as err:
            errors.append(err)

    with s.locked():
        t = threading.Thread(target=other)
        t.start()
        t.join(30)
    assert len(errors) == 1 and "locked by another hpc-bridge process" in str(errors[0])

def test_boot_failures_hold_a_size_at_the_limit_until_cleared(tmp_path):
    from hpc_bridge.errors import UsageError
    from hpc_bridge.nodeops import clear_hold, count_boot_failures

    st = store(tmp_path)
    T = time.time()  # the store prunes by the real clock
    key = "htc/Standard_F2s_v2"
    assert count_boot_failures(st, {key: ["htc-f2sv2-1"]}, 3, T) == {}
    assert count_boot_failures(st, {"htc/other": ["htc-other-1"]}, 3, T) == {}  # counted per size
    # the hold starts in the transaction that counts, with the idle nodes it takes out of service
    held = count_boot_failures(st, {key: ["htc-f2sv2-2", "htc-f2sv2-3"]}, 3, T + 10,
                               idle={key: ["htc-f2sv2-4"], "htc/other": ["htc-other-2"]})
    assert held == {key: "3 VM(s) of this size were Ready but their slurmd never registered"}
    assert count_boot_failures(st, {key: ["htc-f2sv2-5"]}, 3, T + 20) == {}  # already held: no second hold
    state = st.read()  # and it all survives the file
    c = state.cooloffs[key]
    assert c.held and c.until is None and c.nodes == ["htc-f2sv2-2", "htc-f2sv2-3", "htc-f2sv2-4", "htc-f2sv2-5"]
    assert "htc/other" not in state.cooloffs
    assert state.active_cooloffs(T + 1e6) == {key: c} and len(state.boot_failures[key]) == 4
    state.prune(T + 1e6, retention=10.0)
    assert key in state.cooloffs  # a hold outlives retention; the counts do not
    assert state.boot_failures == {}
    with pytest.raises(UsageError, match="not held out of service \\(held: htc/Standard_F2s_v2\\)"):
        clear_hold(st, "htc/other", T + 30)
    assert clear_hold(st, key, T + 30) == c.nodes
    state = st.read()
    assert not state.cooloffs[key].held and state.cooloffs[key].until == T + 30
    assert key not in state.boot_failures and state.active_cooloffs(T + 31) == {}
    assert count_boot_failures(st, {key: ["x"]}, 0, T + 40) == {}  # limit 0: never held


def test_a_version_1_file_is_read_and_its_holds_rewritten_as_version_2(tmp_path):
    s = store(tmp_path)
    s.path.parent.mkdir(parents=True)
    T = time.time()
    s.path.write_text(json.dumps({"version": 1, "operations": [], "cooloffs": {
        "htc/Standard_F2s_v2": {"until": T + 100 * 365 * 86400, "reason": "held", "nodes": ["htc-f2sv2-1"],
                                "until_cleared": True},
        "htc/Standard_F4s_v2": {"until": T + 60, "reason": "capacity", "nodes": [], "until_cleared": False},
        "hpc/Standard_HB120rs_v3": {"until": T + 60, "reason": "capacity, from before holds"}}}))
    cooloffs = s.read().cooloffs
    assert cooloffs["htc/Standard_F2s_v2"].held and cooloffs["htc/Standard_F2s_v2"].nodes == ["htc-f2sv2-1"]
    assert cooloffs["htc/Standard_F4s_v2"].until == T + 60 and not cooloffs["htc/Standard_F4s_v2"].held
    assert cooloffs["hpc/Standard_HB120rs_v3"].until == T + 60
    with s.transaction():
        pass
    data = json.loads(s.path.read_text())
    assert data["version"] == SCHEMA_VERSION == 2
    assert data["cooloffs"]["htc/Standard_F2s_v2"] == {"until": None, "reason": "held", "nodes": ["htc-f2sv2-1"]}
    assert data["cooloffs"]["htc/Standard_F4s_v2"] == {"until": T + 60, "reason": "capacity", "nodes": []}
    assert s.read().cooloffs == cooloffs


# --------------------------------------------------------------------------- the one atomic writer


def test_atomic_write_replaces_the_file_with_its_mode_and_leaves_no_temp(tmp_path):
    target = tmp_path / "topology.conf"
    target.write_text("old\n")
    write_atomically(target, "new\n", mode=0o644)
    assert target.read_text() == "new\n" and stat.S_IMODE(target.stat().st_mode) == 0o644
    write_atomically(target, b"bytes\n")
    assert target.read_bytes() == b"bytes\n" and stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["topology.conf"]


def test_atomic_write_that_fails_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "state.json"
    target.write_text("old")
    with pytest.raises(TypeError):
        write_atomically(target, 42)  # neither text nor bytes: fails after the temp file was made
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


@pytest.mark.skipif(os.geteuid() != 0, reason="handing a file over needs root")
def test_atomic_write_as_root_hands_the_file_to_the_directory_owner(tmp_path):
    os.chown(tmp_path, 4321, 4321)
    write_atomically(tmp_path / "state.json", "{}", hand_over_to_owner=True)
    st = (tmp_path / "state.json").stat()
    assert (st.st_uid, st.st_gid) == (4321, 4321)
    write_atomically(tmp_path / "other", "{}")
    assert (tmp_path / "other").stat().st_uid == 0
