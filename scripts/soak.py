#!/usr/bin/env python3
"""Reliability soak: many concurrent hook processes against a faulty simulator and a real
slurmctld, SIGKILLs at random points, then repair; invariants printed as figures.

    python scripts/soak.py                      # default run: 1,000 cycles, a few minutes
    python scripts/soak.py --cycles 60 --seed 7 # short
    python scripts/soak.py --json               # figures as JSON on stdout

What runs:
- an in-process SimServer (real HTTP on loopback) with a scenario of a few hundred node names
  (written here), request faults (500, 429, latency, dropped connections, lost responses) at
  --fault-rate, boot failures, and capacity failures switched on and off for one bucket;
- a real slurmctld (tests/slurmcluster.py) that includes the partitions.conf and nodemap.json
  written by `hpc-bridge partitions` (the product's own code); its ResumeProgram etc. are the
  product's hook wrappers, and a few cycles are `scontrol update State=POWER_UP` so slurmctld
  itself runs hooks and times nodes out (no slurmd ever registers);
- CYCLES hook processes, --concurrency at a time: `python -m hpc_bridge --config C resume|suspend|
  resume-fail HOSTLIST` on overlapping hostlists, each SIGKILLed at a random point with
  probability --kill-rate (followers started by resume are killed at that rate too);
- then the faults are switched off, every deadline is let pass, and `hpc-bridge repair` runs
  until it plans nothing (at most 4 runs).

Invariants (each must hold; a failure prints the seed and the histories of the nodes involved):
- duplicate creates: 0 — never two live cloud records with one name, never a create (or a
  create request) for a name whose cloud node is alive;
- orphan VMs after repair: 0 — no cloud node holding a VM (booting, Ready, Failed) whose Slurm
  node is powered down or unknown;
- powering up past deadline: 0 — after repair, no Slurm node POWERING_UP for longer than
  ResumeTimeout and no create/start still open in the state file past its deadline;
- state file unreadable: never — read and parsed after every cycle, no file moved aside;
- operations lost: 0 — every create/start/shutdown/deallocate/terminate the simulator carried
  out has a requestId that is in the state file or, once closed for [state] keep_closed, in
  the history file beside it.

Seeded: the choice of verbs, hostlists, kill delays and the simulator's fault rolls follow
--seed; process timing does not, so two runs with one seed are alike, not identical.
Exit status: 0 when every invariant holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from hpc_bridge import hostlist  # noqa: E402
from hpc_bridge.sim.scenario import default_scenario_text  # noqa: E402
from hpc_bridge.state_records import OPEN, RESUME_ACTIONS, State  # noqa: E402

MUTATING = ("create", "start", "shutdown", "deallocate", "terminate", "remove")
LIVE = {"Off", "Acquiring", "Preparing", "Ready", "Failed", "Allocation", "Validation", "Starting"}
HAS_VM = {"Acquiring", "Preparing", "Ready", "Failed", "Allocation", "Validation", "Starting"}
SETTLING = {"Terminating", "Deallocating", "Stopping", "Removing", "Off"}
RESUME_TIMEOUT = 20


# --------------------------------------------------------------------------- scenario


def soak_scenario(nodes: int, seed: int, fault_rate: float, boot_failure_rate: float) -> dict:
    """A cluster with about `nodes` Slurm node names over four buckets; quota below the name
    count on two of them, so "no capacity left" happens too."""
    data = tomllib.loads(default_scenario_text())
    hpc, f2, f4, gpu = (max(4, int(nodes * share)) for share in (0.3, 0.35, 0.25, 0.1))
    data["cluster"].update(maxCount=nodes * 2, maxCoreCount=nodes * 200)
    data["timings"].update(acquiring=20, preparing=20, terminating=10, deallocating=10, time_scale=0.05)
    data["nodearrays"] = [
        {"name": "hpc", "ShutdownPolicy": "Deallocate", "maxCount": hpc, "attributes": {"Interruptible": False},
         "buckets": [{"machineType": "Standard_HB120rs_v3", "vcpuCount": 120, "pcpuCount": 120, "memory": 448.0,
                      "infiniband": True, "maxCount": hpc, "maxPlacementGroupSize": 10,
                      "quotaCoreCount": 120 * max(2, hpc * 2 // 3)}]},
        {"name": "htc", "ShutdownPolicy": "Terminate", "maxCount": f2 + f4,
         "buckets": [{"machineType": "Standard_F2s_v2", "vcpuCount": 2, "pcpuCount": 1, "memory": 4.0, "maxCount": f2},
                     {"machineType": "Standard_F4s_v2", "vcpuCount": 4, "pcpuCount": 2, "memory": 8.0, "maxCount": f4,
                      "quotaCount": max(2, f4 * 2 // 3)}]},
        {"name": "gpu", "ShutdownPolicy": "Deallocate", "maxCount": gpu,
         "buckets": [{"machineType": "Standard_NC24ads_A100_v4", "vcpuCount": 24, "pcpuCount": 24, "memory": 220.0,
                      "gpuCount": 1, "maxCount": gpu}]},
    ]
    # Request faults: fault_rate split over 500 / 429 / dropped / lost response.
    data["faults"] = {
        "seed": seed,
        "error_rate": round(fault_rate * 0.3, 4),
        "throttle_rate": round(fault_rate * 0.25, 4),
        "retry_after": 0.1,
        "drop_rate": round(fault_rate * 0.2, 4),
        "lost_response_rate": round(fault_rate * 0.25, 4),
        "latency": 0.01,
        "boot_failure_rate": boot_failure_rate,
        "capacity_failure": [],
    }
    return data


REQUEST_FAULTS = ("error_rate", "throttle_rate", "drop_rate", "lost_response_rate", "latency")


# --------------------------------------------------------------------------- observing the simulator


class SimRecorder:
    """Wraps the simulator model's mutating entry points to keep a log of what the API did
    (observation only: the wrapped methods run unchanged)."""

    def __init__(self, sim):
        self.sim = sim
        self.calls: list[dict] = []  # {"t", "action", "request_id", "names", "added"/"ok", "live_before"}
        self.boot_failures = 0
        self.capacity_refusals = 0
        m = sim.model
        orig_create, orig_manage, orig_boot = m.create, m.manage, m._boot

        def create(body, now):
            live = {r.name for r in m.nodes.values() if r.status in LIVE | {"Terminating", "Deallocating", "Deallocated"}}
            names = [s.get("nameFormat") for s in (body.get("sets") or []) if isinstance(s, dict)] \
                if isinstance(body, dict) else []
            entry = {"t": time.time(), "action": "create", "request_id": (body or {}).get("requestId"),
                     "names": names, "live_before": sorted(n for n in names if n in live)}
            try:
                result = orig_create(body, now)
            except Exception as err:
                entry["error"] = str(err)
                self.calls.append(entry)
                raise
            entry["added"] = [s.get("added", 0) for s in result["sets"]]
            entry["messages"] = [s.get("message") for s in result["sets"]]
            self.capacity_refusals += sum(1 for s in result["sets"] if "apacity" in (s.get("message") or ""))
            self.calls.append(entry)
            return result

        def manage(action, body, now):
            entry = {"t": time.time(), "action": action, "request_id": (body or {}).get("requestId")
                     if isinstance(body, dict) else None}
            try:
                result = orig_manage(action, body, now)
            except Exception as err:
                entry["error"] = str(err)
                entry["names"] = []
                self.calls.append(entry)
                raise
            entry["names"] = [n.get("name") for n in result["nodes"]]
            entry["ok"] = [n.get("status") == "OK" for n in result["nodes"]]
            self.capacity_refusals += sum(1 for n in result["nodes"] if "apacity" in (n.get("error") or ""))
            self.calls.append(entry)
            return result

        def boot(rec, at):
            orig_boot(rec, at)
            if rec.will_fail:
                self.boot_failures += 1

        m.create, m.manage, m._boot = create, manage, boot

    def live_duplicates(self) -> dict[str, int]:
        with self.sim._lock:
            counts = Counter(r.name for r in self.sim.model.nodes.values() if r.status not in ("Terminated",))
        return {n: c for n, c in counts.items() if c > 1}


# --------------------------------------------------------------------------- processes


def pids_of_followers(config_path: str) -> list[int]:
    """Follower processes started (via resume) for this soak's config: found by their argv."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if config_path.encode() in argv and b"follow" in argv and b"hpc_bridge" in argv:
            out.append(int(entry))
    return out


def kill_pid(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False


# --------------------------------------------------------------------------- the soak


class Soak:
    def __init__(self, args: argparse.Namespace, root: Path, slurm_factory=None):
        self.slurm_factory = slurm_factory  # tests pass their fixture's (it stops what it made)
        self.args = args
        self.root = root
        self.rng = random.Random(args.seed)
        self.history: dict[str, list[str]] = defaultdict(list)  # node -> events (ours)
        self.cycle_log: list[dict] = []
        self.figures: dict = {}
        self.failures: list[tuple[str, list[str]]] = []  # (invariant text, nodes involved)
        self.state_read_errors: list[str] = []

    # ------------------------------------------------------------------ set up

    def setup(self) -> None:
        from bridge_env import BridgeEnv
        from slurmcluster import SlurmCluster, slurm_available
        from hpc_bridge.sim.scenario import load_scenario  # noqa: F401 (validates below)

        why = slurm_available()
        if why:
            raise SystemExit(f"soak: a real slurmctld is needed: {why}")
        a = self.args
        scenario = soak_scenario(a.nodes, a.seed, a.fault_rate, a.boot_failure_rate)
        self.faults = copy.deepcopy(scenario["faults"])

        def factory(start: bool = False, **kwargs):
            if self.slurm_factory is not None:
                return self.slurm_factory(start=False, resume_timeout=RESUME_TIMEOUT, suspend_time=3600, **kwargs)
            return SlurmCluster(self.root / "slurm", resume_timeout=RESUME_TIMEOUT, suspend_time=3600, **kwargs)

        extra = (f'address_mode = "{a.address_mode}"\n'
                 f"[resume]\nresume_timeout = {RESUME_TIMEOUT}\ncapacity_cooloff = 15\n"
                 "[repair]\ngrace = 0\n"
                 "[state]\nkeep_closed = 20\n")  # closed records move to the history file during the run
        # the partitions are generated with faults off (the product's own `partitions` command)
        quiet = dict(scenario)
        quiet["faults"] = {**scenario["faults"], **{k: 0.0 for k in REQUEST_FAULTS}}
        self.env = BridgeEnv.create(self.root, factory, scenario=quiet, config_extra=extra, bridge_hooks=True)
        self.sim = self.env.sim
        self.recorder = SimRecorder(self.sim)
        self.sim.set_faults(**{k: self.faults[k] for k in REQUEST_FAULTS})
        self.sim.reset_stats()
        self.config = str(self.env.config_path)
        from hpc_bridge.nodemap import load_nodemap

        nodemap = load_nodemap(self.env.conf_dir / "nodemap.json")
        self.names = sorted(nodemap.names()) if hasattr(nodemap, "names") else sorted(
            n for n in self.env.cluster.slurm().show_nodes())
        self.groups: dict[str, list[str]] = defaultdict(list)
        for n in self.names:
            self.groups[n.rstrip("0123456789")].append(n)
        for g in self.groups.values():
            g.sort(key=lambda n: int(n[len(n.rstrip("0123456789")):]))
        # a hot set: a fifth of the names get half the traffic, so hostlists overlap a lot
        self.hot = self.rng.sample(self.names, max(8, len(self.names) // 5))

    # ------------------------------------------------------------------ one cycle

    def pick_hostlist(self) -> list[str]:
        r = self.rng
        if r.random() < 0.5:
            chosen = r.sample(self.hot, r.randint(1, 6))
        else:
            prefix = r.choice(sorted(self.groups))
            group = self.groups[prefix]
            length = r.choice([1, 1, 2, 3, 4, 6, 8, 12, 20])
            start = r.randrange(0, max(1, len(group) - length + 1))
            chosen = group[start:start + length]
            if r.random() < 0.3:
                chosen += r.sample(self.hot, 2)
        return sorted(set(chosen))

    def launch(self, n: int) -> dict:
        r = self.rng
        verb = r.choices(["resume", "suspend", "resume-fail"], weights=[0.5, 0.35, 0.15])[0]
        names = self.pick_hostlist()
        expr = hostlist.compress_sorted(names)
        kill_at = r.uniform(0.05, 1.2) if r.random() < self.args.kill_rate else None
        proc = subprocess.Popen(
            self.env.argv("--config", self.config, verb, expr),  # with the cluster's Slurm release
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env.cli_env(),
        )
        t0 = time.monotonic()
        return {"n": n, "verb": verb, "expr": expr, "names": names, "proc": proc, "t0": t0, "wall": time.time(),
                "kill_at": None if kill_at is None else t0 + kill_at, "killed": False}

    def finish(self, c: dict) -> None:
        out, err = c["proc"].communicate()
        rc = c["proc"].returncode
        c.update(rc=rc, stdout=out.strip(), stderr=err.strip(), dt=time.monotonic() - c["t0"])
        del c["proc"]
        what = "SIGKILL" if c["killed"] else f"rc={rc}"
        line = f"cycle {c['n']} +{c['wall'] - self.t_start:.1f}s {c['verb']} {c['expr']} pid {c['pid']} {what}"
        if c["stdout"]:
            line += f": {c['stdout'].splitlines()[-1]}"
        if "Traceback" in c["stderr"]:
            self.failures.append((f"cycle {c['n']}: traceback on stderr: {c['stderr'][-300:]}", c["names"]))
        for name in c["names"]:
            self.history[name].append(line)
        self.cycle_log.append(c)
        self.check_state_file(f"after cycle {c['n']}")

    def check_state_file(self, when: str) -> None:
        path = self.env.state_dir / "state.json"
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return
        try:
            State.from_json(json.loads(raw), str(path))
        except Exception as err:  # noqa: BLE001 - any failure is the finding
            self.state_read_errors.append(f"{when}: {type(err).__name__}: {err}")

    # ------------------------------------------------------------------ phases

    def run_cycles(self) -> None:
        a = self.args
        self.t_start = time.time()
        stop_at = time.monotonic() + a.minutes * 60
        running: list[dict] = []
        launched = 0
        kills = follower_kills = power_ups = 0
        capacity_on = False
        next_capacity_toggle = self.rng.randint(40, 120)
        while (launched < a.cycles and time.monotonic() < stop_at) or running:
            now = time.monotonic()
            for c in list(running):
                if c["kill_at"] is not None and not c["killed"] and now >= c["kill_at"] and c["proc"].poll() is None:
                    c["killed"] = kill_pid(c["proc"].pid)
                    kills += c["killed"]
                if c["proc"].poll() is not None:
                    running.remove(c)
                    self.finish(c)
            while len(running) < a.concurrency and launched < a.cycles and time.monotonic() < stop_at:
                launched += 1
                if launched == next_capacity_toggle:
                    capacity_on = not capacity_on
                    self.sim.set_faults(capacity_failure=["htc/Standard_F4s_v2"] if capacity_on else [])
                    next_capacity_toggle += self.rng.randint(40, 120)
                if self.rng.random() < a.power_up_rate:
                    # slurmctld runs the product's ResumeProgram itself for this one
                    name = self.rng.choice(self.hot)
                    subprocess.run([f"{self.env.cluster.bin_dir}/scontrol", "update", f"NodeName={name}",
                                    "State=POWER_UP"], env=self.env.cluster.env, capture_output=True, timeout=30)
                    self.history[name].append(f"+{time.time() - self.t_start:.1f}s scontrol POWER_UP (slurmctld runs resume)")
                    power_ups += 1
                c = self.launch(launched)
                c["pid"] = c["proc"].pid
                running.append(c)
            if self.rng.random() < a.kill_rate * 0.05:
                for pid in pids_of_followers(self.config)[:1]:
                    follower_kills += kill_pid(pid)
            if launched % 50 == 0 and not running:
                pass
            time.sleep(0.02)
            dups = self.recorder.live_duplicates() if launched % 10 == 0 else {}
            for name, count in dups.items():
                self.failures.append((f"{count} live cloud records named {name}", [name]))
        self.sim.set_faults(capacity_failure=[])
        self.figures.update(cycles=len(self.cycle_log), kills=kills, follower_kills=follower_kills,
                            slurm_power_ups=power_ups, cycle_seconds=round(time.time() - self.t_start, 1))

    def quiesce_and_repair(self) -> None:
        """Faults off, every deadline passed, followers gone; then repair until it plans nothing."""
        stats = self.sim.stats()
        self.fault_stats = stats
        self.sim.set_faults(**{k: 0.0 for k in REQUEST_FAULTS}, boot_failure_rate=0.0, capacity_failure=[])
        # one repair while slurmctld may still be timing nodes out, then wait for every deadline
        state = self.env.state()
        deadlines = [op["deadline"] for op in state.get("operations", [])]
        wait_until = max([time.time() + 1, *deadlines]) + 2
        slurm_deadline = time.time() + RESUME_TIMEOUT + 5  # a POWER_UP in flight times out by then
        wait_until = max(wait_until, slurm_deadline)
        while time.time() < wait_until:
            time.sleep(0.5)
        for pid in pids_of_followers(self.config):  # past their --until they should be gone already
            kill_pid(pid)
            self.figures["followers_alive_past_deadline"] = self.figures.get("followers_alive_past_deadline", 0) + 1
        self.repairs = []
        for i in range(4):
            run = self.env.cli("repair", "--json", timeout=120)
            try:
                report = json.loads(run.stdout)
            except json.JSONDecodeError:
                report = {"raw": run.stdout[-500:], "stderr": run.stderr[-500:]}
            actions = report.get("actions", [])
            self.repairs.append({"rc": run.rc, "actions": len(actions), "kinds": dict(Counter(a.get("kind") for a in actions))})
            for act in actions:
                self.history[act.get("node", "?")].append(f"repair run {i + 1}: {act.get('kind')} ({act.get('reason')})")
            if "Traceback" in run.stderr:
                self.failures.append((f"repair run {i + 1}: traceback: {run.stderr[-300:]}", []))
            self.settle()
            if not actions:
                break

    def settle(self, timeout: float = 15.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            statuses = {r.status for r in self.sim.model.nodes.values()}
            if not statuses & SETTLING:
                return
            time.sleep(0.2)

    # ------------------------------------------------------------------ invariants

    def check(self) -> None:
        sim_calls = self.recorder.calls
        state = State.from_json(self.env.state(), "state.json") if self.env.state() else State()
        slurm_nodes = self.env.cluster.slurm().show_nodes()
        now = time.time()

        # duplicate creates
        dup_attempts = [(c, n) for c in sim_calls if c["action"] == "create" and "error" not in c
                        for n in c.get("live_before", [])]
        for c, n in dup_attempts:
            self.failures.append((f"create {c['request_id']} asked for {n} while its cloud node was alive", [n]))
        for name, count in self.recorder.live_duplicates().items():
            self.failures.append((f"{count} live cloud records named {name}", [name]))
        created = Counter(n for c in sim_calls if c["action"] == "create" and "added" in c
                          for n, added in zip(c["names"], c["added"]) if added)

        # orphans after repair
        orphans = []
        for rec in self.sim.model.nodes.values():
            if rec.status not in HAS_VM:
                continue
            s = slurm_nodes.get(rec.name)
            if s is None or "POWERED_DOWN" in s.state_flags or "POWERING_DOWN" in s.state_flags:
                orphans.append(rec.name)
                self.failures.append((f"orphan VM after repair: {rec.name} is {rec.status} in the cloud, Slurm: "
                                      f"{'unknown' if s is None else s.state + '+' + '+'.join(sorted(s.state_flags))}",
                                      [rec.name]))

        # powering up past the deadline
        late = []
        for name, s in slurm_nodes.items():
            if "POWERING_UP" in s.state_flags:
                late.append(name)
                self.failures.append((f"{name} still POWERING_UP in Slurm after repair", [name]))
        for op in state.operations.values():
            if op.action in RESUME_ACTIONS and op.outcome in OPEN and op.deadline < now:
                late.extend(op.nodes)
                self.failures.append((f"{op.action} {op.request_id} still {op.outcome} past its deadline after repair",
                                      list(op.nodes)))

        # state file
        corrupt = sorted(p.name for p in self.env.state_dir.glob("state.json.corrupt-*"))
        for e in self.state_read_errors:
            self.failures.append((f"state file unreadable {e}", []))
        for p in corrupt:
            self.failures.append((f"state file was moved aside as corrupt: {p}", []))
        # a writer killed mid-write leaves a temp file; the next writer (repair, at the latest) removes it
        for p in sorted(self.env.state_dir.glob(".state.json.*")):
            self.failures.append((f"temp file left in the state directory after repair: {p.name}", []))

        # operations lost from the state file (closed ones move on to the history file)
        from hpc_bridge.state import StateStore

        history = StateStore(self.env.state_dir / "state.json").history()
        recorded = set(state.operations) | {op.request_id for op in history}
        lost = []
        carried_out = [c for c in sim_calls if c["action"] in MUTATING and "error" not in c]
        for c in carried_out:
            if not c.get("request_id") or c["request_id"] not in recorded:
                lost.append(c)
                self.failures.append((f"{c['action']} {c.get('request_id')} of {','.join(map(str, c['names']))[:200]} "
                                      "reached the API but is not in the state file or its history", [n for n in c["names"] if n]))

        # sim-side history per node, for the report of a failure
        for c in sim_calls:
            for i, n in enumerate(c.get("names") or []):
                if not n:
                    continue
                result = ("refused: " + c["error"]) if "error" in c else (
                    f"added={c['added'][i]} {c['messages'][i] or ''}" if c["action"] == "create"
                    else ("OK" if c["ok"][i] else "error"))
                self.history[n].append(f"+{c['t'] - self.t_start:.1f}s API {c['action']} {c['request_id']}: {result}")

        st = self.fault_stats
        faults = st.get("faults", {})
        request_faults = sum(faults.values())
        total = st.get("total", 0) or sum(st.get("requests", {}).values())
        self.figures.update(
            api_requests=total,
            request_faults_injected=request_faults,
            request_fault_breakdown=faults,
            request_fault_fraction=round(request_faults / total, 3) if total else 0.0,
            boot_failures_injected=self.recorder.boot_failures,
            capacity_failures_injected=self.recorder.capacity_refusals,
            creates_carried_out=sum(created.values()),
            mutating_calls_carried_out=len(carried_out),
            duplicate_creates=len(dup_attempts) + len(self.recorder.live_duplicates()),
            orphan_vms_after_repair=len(orphans),
            powering_up_past_deadline=len(set(late)),
            state_file_unreadable=len(self.state_read_errors) + len(corrupt),
            operations_lost=len(lost),
            state_operations=len(state.operations),
            repair_runs=self.repairs,
            hook_exit_codes=dict(Counter(str(c["rc"]) if not c["killed"] else "SIGKILL" for c in self.cycle_log)),
            hook_seconds_median=round(sorted(c["dt"] for c in self.cycle_log)[len(self.cycle_log) // 2], 2)
            if self.cycle_log else None,
        )

    def report(self) -> int:
        a = self.args
        f = self.figures
        ok = not self.failures
        if a.json:
            print(json.dumps({"seed": a.seed, "ok": ok, "figures": f,
                              "failures": [t for t, _ in self.failures][:50]}, indent=2))
        else:
            print(f"soak seed={a.seed} nodes={len(self.names)} concurrency={a.concurrency} "
                  f"fault-rate={a.fault_rate} kill-rate={a.kill_rate} address-mode={a.address_mode}")
            rows = [
                ("cycles run (hook processes)", f["cycles"]),
                ("  exit codes", f["hook_exit_codes"]),
                ("  median hook time (s)", f["hook_seconds_median"]),
                ("  slurmctld-driven POWER_UPs", f["slurm_power_ups"]),
                ("API requests", f["api_requests"]),
                ("request faults injected", f"{f['request_faults_injected']} ({f['request_fault_fraction']:.1%}) "
                                            f"{f['request_fault_breakdown']}"),
                ("boot failures injected", f["boot_failures_injected"]),
                ("capacity failures injected", f["capacity_failures_injected"]),
                ("hooks SIGKILLed", f["kills"]),
                ("followers SIGKILLed", f["follower_kills"]),
                ("creates carried out", f["creates_carried_out"]),
                ("mutating calls carried out", f["mutating_calls_carried_out"]),
                ("repair runs (actions each)", [r["actions"] for r in f["repair_runs"]]),
                ("duplicate creates", f["duplicate_creates"]),
                ("orphan VMs after repair", f["orphan_vms_after_repair"]),
                ("powering up past deadline", f["powering_up_past_deadline"]),
                ("state file unreadable", f["state_file_unreadable"]),
                ("operations lost from state file", f["operations_lost"]),
                ("wall time (s)", f["cycle_seconds"]),
            ]
            width = max(len(k) for k, _ in rows)
            for k, v in rows:
                print(f"  {k:<{width}}  {v}")
        if not ok:
            print(f"\nINVARIANT FAILED (seed {a.seed}; rerun: python scripts/soak.py --seed {a.seed} "
                  f"--cycles {a.cycles} --nodes {a.nodes} --fault-rate {a.fault_rate} --kill-rate {a.kill_rate}):",
                  file=sys.stderr)
            shown: set[str] = set()
            for text, nodes in self.failures[:20]:
                print(f"- {text}", file=sys.stderr)
                for n in nodes[:2]:
                    if n in shown:
                        continue
                    shown.add(n)
                    print(f"  history of {n}:", file=sys.stderr)
                    for line in self.history.get(n, [])[-25:]:
                        print(f"    {line}", file=sys.stderr)
            if len(self.failures) > 20:
                print(f"... and {len(self.failures) - 20} more", file=sys.stderr)
        return 0 if ok else 1

    def close(self) -> None:
        for pid in pids_of_followers(self.config) if hasattr(self, "config") else []:
            kill_pid(pid)
        if getattr(self, "env", None) is not None:
            try:
                self.env.close()
            finally:
                if self.env.cluster is not None and self.slurm_factory is None:
                    self.env.cluster.stop()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cycles", type=int, default=1000, help="hook processes to run (default 1000)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--nodes", type=int, default=300, help="about this many Slurm node names (default 300)")
    p.add_argument("--fault-rate", type=float, default=0.2, help="fraction of API requests that fail (default 0.2)")
    p.add_argument("--boot-failure-rate", type=float, default=0.1)
    p.add_argument("--kill-rate", type=float, default=0.15, help="fraction of hooks SIGKILLed (default 0.15)")
    p.add_argument("--power-up-rate", type=float, default=0.02,
                   help="fraction of cycles that also POWER_UP a node through slurmctld (default 0.02)")
    p.add_argument("--concurrency", type=int, default=4, help="hook processes at once (default 4)")
    p.add_argument("--minutes", type=float, default=10.0, help="stop starting cycles after this long (default 10)")
    p.add_argument("--address-mode", choices=["ip", "registration"], default="registration")
    p.add_argument("--workdir", help="keep everything here (default: a temporary directory, removed)")
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.workdir:
        root = Path(args.workdir).resolve()
        root.mkdir(parents=True, exist_ok=True)
        cleanup = None
    else:
        cleanup = tempfile.TemporaryDirectory(prefix="hpc-bridge-soak-")
        root = Path(cleanup.name)
    soak = Soak(args, root)
    try:
        soak.setup()
        soak.run_cycles()
        soak.quiesce_and_repair()
        soak.check()
        return soak.report()
    finally:
        soak.close()
        if cleanup is not None:
            cleanup.cleanup()


if __name__ == "__main__":
    raise SystemExit(main())
