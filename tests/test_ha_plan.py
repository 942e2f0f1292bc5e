"""Two controllers sharing one state directory, the parts that need no cluster: whose hook or
follower is alive (by host, never by a PID alone), the lock that keeps repair single, and what
doctor and install-hooks say about a backup controller. The failover itself: tests/test_ha.py."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from hpc_bridge import doctor, flock, install, slurm_conf
from hpc_bridge.lease import hook_alive
from hpc_bridge.state import StateStore
from hpc_bridge.state_records import HOST, Operation, State

NOW = 1_900_000_000.0


def op(host, pid=10):
    return Operation("r1", "create", ["a-1"], NOW - 5, NOW + 100, pid=pid, host=host)


@pytest.mark.parametrize("host, alive, expected", [
    ("h1", True, True),  # this host: its PID says
    ("h1", False, False),
    (None, False, False),  # written by a single-controller install: this host's
    (None, True, True),
    ("h2", False, True),  # another host's hook: its PID means nothing here, only the record's age ends it
])
def test_hook_alive_by_host_then_pid(host, alive, expected):
    assert hook_alive(op(host), host="h1", alive=lambda pid: alive) is expected


def test_a_record_names_the_host_of_its_hook_and_reads_back(tmp_path):
    store = StateStore(tmp_path / "state.json")
    with store.transaction() as state:
        state.begin("create", ["a-1"], "r1", NOW, NOW + 100)
    assert store.read().operations["r1"].host == HOST
    # a file written before hosts were recorded still reads
    old = State(operations={"r2": Operation("r2", "create", ["a-2"], NOW, NOW + 1)}).to_json()
    del old["operations"][0]["host"]
    assert State.from_json(old, "x").operations["r2"].host is None


# --------------------------------------------------------------------------- the lock


def test_try_exclusive_is_refused_while_another_process_holds_it(tmp_path):
    path = str(tmp_path / "repair.lock")
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            sys.path.insert(0, {os.getcwd()!r})
            from hpc_bridge import flock
            with flock.try_exclusive({path!r}) as held:
                print(held, flush=True)
                sys.stdin.readline()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "True"
        with flock.try_exclusive(path) as held:
            assert held is False
        with flock.try_exclusive(path, timeout=0.2) as held:  # a bounded wait, then no
            assert held is False
    finally:
        holder.stdin.close()
        holder.wait(10)
    with flock.try_exclusive(path) as held:  # let go with its process
        assert held is True


def test_excludes_another_process_on_a_local_directory(tmp_path):
    assert flock.excludes_another_process(str(tmp_path / "state.json.lock")) is None


def test_excludes_another_process_says_when_the_lock_is_held_elsewhere(tmp_path):
    path = str(tmp_path / "state.json.lock")
    with flock.try_exclusive(path):
        why = flock.excludes_another_process(path, timeout=0.2)
    assert why and "could not test" in why


# --------------------------------------------------------------------------- doctor and install-hooks


def conf_of(text):
    conf = slurm_conf.SlurmConf(path="/etc/slurm/slurm.conf")
    slurm_conf.parse_slurm_conf_text(text, conf.path, conf, "/etc/slurm", lambda p: None)
    return conf


@pytest.mark.parametrize("text, hosts", [
    ("SlurmctldHost=c1\n", ["c1"]),
    ("SlurmctldHost=c1(10.0.0.1)\nSlurmctldHost=c2(10.0.0.2)\n", ["c1", "c2"]),
    ("ControlMachine=old1\nBackupController=old2\n", ["old1", "old2"]),
    ("", []),
])
def test_controller_hosts(text, hosts):
    assert install.controller_hosts(conf_of(text)) == hosts


MOUNTINFO = [
    "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw",
    "40 22 0:40 / /shared rw,relatime - nfs4 srv:/export rw,vers=4.2,local_lock=none",
    "41 22 0:41 / /old rw,relatime - nfs srv:/old rw,vers=3,nolock,local_lock=all",
    "42 22 0:42 / /v3 rw,relatime - nfs srv:/v3 rw,vers=3,local_lock=none",
    r"43 22 0:43 / /with\040space rw - tmpfs tmpfs rw",
]


@pytest.mark.parametrize("path, point, fstype, result", [
    ("/shared/hpc-bridge", "/shared", "nfs4", doctor.OK),
    ("/old/hpc-bridge", "/old", "nfs", doctor.FAIL),  # locks local to each host
    ("/v3/hpc-bridge", "/v3", "nfs", doctor.OK),  # lockd: the lock check says whether it works
    ("/var/lib/hpc-bridge", "/", "ext4", doctor.WARN),  # shared only if both controllers are this host
    ("/with space/x", "/with space", "tmpfs", doctor.WARN),
    ("/sharedX/x", "/", "ext4", doctor.WARN),  # a prefix of the name is not the mount
])
def test_state_dir_storage_with_a_backup_controller(path, point, fstype, result):
    mount = doctor.parse_mountinfo(MOUNTINFO, path)
    assert (mount.point, mount.fstype) == (point, fstype)
    checks = doctor.check_shared_storage(doctor.Facts(state_mount=mount, controllers=["c1", "c2"]))
    assert [c.result for c in checks] == [result], [c.line() for c in checks]
    assert doctor.check_shared_storage(doctor.Facts(state_mount=mount, controllers=["c1"])) == []


def test_lock_check_reports_a_lock_that_does_not_exclude():
    bad = doctor.check_lock(doctor.Facts(lock_tested=True, lock_problem="a second process took the lock"))
    assert bad[0].result == doctor.FAIL and "NFSv4" in bad[0].fix
    assert doctor.check_lock(doctor.Facts(lock_tested=True))[0].result == doctor.OK


SHARED = {"ResumeProgram": "/h/resume", "SlurmctldHost": "c1,c2", "StateSaveLocation": "/shared/slurm"}


@pytest.mark.parametrize("peers, result, says", [
    ({}, doctor.WARN, "doctor has not run on c2"),
    ({"c2": {"host": "c2", "shared": SHARED, "timer": "enabled"}}, doctor.OK, "c1, c2"),
    ({"c2": {"host": "c2", "shared": SHARED, "timer": "installed"}}, doctor.FAIL, "repair timer on c2 is installed"),
    ({"c2": {"host": "c2", "shared": {**SHARED, "ResumeProgram": "/other/resume"}, "timer": "enabled"}},
     doctor.FAIL, "ResumeProgram (/other/resume there, /h/resume here)"),
])
def test_controllers_compared_through_the_state_dir(peers, result, says):
    f = doctor.Facts(host="c1", controllers=["c1", "c2"], shared=SHARED, peers=peers)
    checks = doctor.check_controllers(f)
    assert [c.result for c in checks] == [result] and says in checks[0].detail, [c.line() for c in checks]


def test_controller_records_are_exchanged_in_the_state_dir(tmp_path):
    peers, error = doctor.exchange_records(str(tmp_path), "c1", {"shared": SHARED, "timer": "enabled"})
    assert (peers, error) == ({}, None)
    peers, error = doctor.exchange_records(str(tmp_path), "c2", {"shared": SHARED, "timer": "missing"})
    assert error is None and peers["c1"]["shared"] == SHARED and peers["c1"]["timer"] == "enabled"
    (tmp_path / "controller-bad.json").write_text("{not json")
    peers, _ = doctor.exchange_records(str(tmp_path), "c1", {"shared": SHARED, "timer": "enabled"})
    assert set(peers) == {"c2"} and peers["c2"]["timer"] == "missing"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["controller-bad.json", "controller-c1.json",
                                                          "controller-c2.json"]


def test_install_hooks_names_the_steps_for_each_controller():
    plan = install.InstallPlan(files={}, include_path="/etc/slurm/hpc-bridge.conf", settings=[])
    assert not any("controllers" in line for line in install.instructions(plan, "/etc/slurm", ["c1"]))
    steps = "\n".join(install.instructions(plan, "/etc/slurm", ["c1", "c2"]))
    assert "2 controllers (c1, c2)" in steps and "on EACH of them" in steps and "state_dir" in steps


def test_storage_without_locks_is_one_line_naming_the_lock_file(tmp_path, monkeypatch):
    """NFSv3 without lockd: flock fails with ENOLCK. The state lock, repair's lock and doctor's
    check each say so in one line naming the file (flock's own error names none)."""
    import errno
    import fcntl

    from hpc_bridge.errors import StateError
    from hpc_bridge.repair import singleton

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    store = StateStore(tmp_path / "state.json")
    with pytest.raises(StateError, match=r"cannot lock .*state\.json\.lock: No locks available"):
        with store.transaction():
            pass
    with pytest.raises(StateError, match=r"cannot lock .*repair\.lock: No locks available"):
        with singleton(store):
            pass
    assert "No locks available" in flock.excludes_another_process(str(tmp_path / "x.lock"))
