"""The generated files against a REAL slurmctld (and the CLI against the simulator over HTTP).

Each case renders partitions.conf / gres.conf / topology.conf, boots slurmctld on loopback with
them included (tests/slurmcluster.py: own munged, own ports, PrivateData=cloud so powered-down
cloud nodes are visible, GresTypes=gpu, TopologyPlugin=topology/tree), and checks that
`scontrol show node/partition/topology` report what the buckets imply.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

from hpc_bridge.api.models import ClusterStatus
from hpc_bridge.hostlist import expand
from hpc_bridge.nodemap import load_nodemap
from hpc_bridge.partitions import render, write_outputs
from hpc_bridge.partitions_plan import plan_partitions
from hpc_bridge.sim.model import ClusterModel
from bridge_env import FORMS, all_forms
from test_partitions_plan import array, bucket, make_cfg, make_status

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SCENARIO = REPO / "hpc_bridge" / "sim" / "default.toml"


# --------------------------------------------------------------------------- helpers


def start_cluster(factory, *args, **kwargs):
    """factory(...) started after opening the traverse bit on its workdir and the parents
    pytest made 0700: munged refuses a socket below a directory others cannot traverse."""
    c = factory(*args, start=False, **kwargs)
    c.workdir.mkdir(parents=True, exist_ok=True)
    for d in (c.workdir, *c.workdir.parents):
        if str(d).startswith("/tmp/") and not d.stat().st_mode & 0o001:
            d.chmod(d.stat().st_mode | 0o111)
    c.start()
    return c


def _pairs(line: str) -> dict[str, str]:
    out = {}
    for token in line.split():
        key, eq, value = token.partition("=")
        if eq:
            out[key] = value
    return out


def show_nodes(c) -> dict[str, dict[str, str]]:
    text = c.scontrol("-o", "show", "node")
    nodes = {}
    for line in text.splitlines():
        if line.startswith("NodeName="):
            d = _pairs(line)
            nodes[d["NodeName"]] = d
    return nodes


def show_partitions(c) -> dict[str, dict[str, str]]:
    return {d["PartitionName"]: d for d in (_pairs(l) for l in c.scontrol("-o", "show", "partition").splitlines()) if d}


def show_topology(c) -> dict[str, dict[str, str]]:
    return {d["SwitchName"]: d for d in (_pairs(l) for l in c.scontrol("show", "topology").splitlines()) if "SwitchName" in d}


def boot(factory, tmp_path: Path, status: ClusterStatus, cfg=None):
    """Plan + render + write into tmp_path/out, boot slurmctld on it. Returns (cluster, plan, out)."""
    cfg = cfg or make_cfg()
    plan = plan_partitions(status, cfg)
    out = tmp_path / "out"
    write_outputs(render(plan, cfg.slurm.template_dir), out)
    c = start_cluster(
        factory,
        [out / "partitions.conf"],
        topology_conf=out / "topology.conf",
        gres_conf=out / "gres.conf",
        prolog_wait_for_nodes=False,
        # power saving on, as with hpc-bridge: 24.11 leaves a partition's SuspendTime & co out of
        # `scontrol show partition` when it is off
        resume_program="/bin/true",
        suspend_program="/bin/true",
    )
    return c, plan, out


def check_cluster_matches_plan(c, plan) -> None:
    """Every generated node, partition and switch is in slurmctld with the planned values."""
    nodes = show_nodes(c)
    planned = set(plan.names())
    assert set(nodes) == planned
    for g in plan.groups:
        for name in (g.names()[0], g.names()[-1]):
            n = nodes[name]
            assert int(n["CPUTot"]) == g.cpus
            assert int(n["RealMemory"]) == g.real_memory < g.vm_memory_mb
            assert int(n["ThreadsPerCore"]) == g.threads_per_core
            assert int(n["Weight"]) == g.weight
            assert n["AvailableFeatures"].split(",") == list(g.features)
            assert n["Gres"] == (f"gpu:{g.gpus}" if g.gpus else "(null)")
            assert "CLOUD" in n["State"] and "POWERED_DOWN" in n["State"]
            assert n["Partitions"] == g.partition
    parts = show_partitions(c)
    assert set(parts) == {p.name for p in plan.partitions}
    for p in plan.partitions:
        sp = parts[p.name]
        want = {n for g in plan.groups if g.partition == p.name for n in g.names()}
        assert set(expand(sp["Nodes"])) == want
        assert sp["NodeSets"] == ",".join(p.nodesets)
        assert sp["Default"] == ("YES" if p.default else "NO")
        assert sp["OverSubscribe"] == ("EXCLUSIVE" if p.exclusive else "NO")
        assert int(sp["DefMemPerCPU"]) == p.def_mem_per_cpu
        assert sp["State"] == "UP"
    topo = show_topology(c)
    assert set(topo) == {s.name for s in plan.switches}
    for s in plan.switches:
        if s.nodes:
            assert set(expand(topo[s.name]["Nodes"])) == set(expand(s.nodes))
            assert topo[s.name]["Level"] == "0"
        else:
            assert topo[s.name]["Switches"] == s.switches
    if plan.switches:
        assert set(expand(topo["root"]["Nodes"])) == planned


# --------------------------------------------------------------------------- cases


@all_forms
def test_simulator_default_scenario_boots_slurmctld(slurm_cluster_factory, tmp_path, api_form):
    scenario = tomllib.loads(DEFAULT_SCENARIO.read_text())
    scenario["cluster"].update(FORMS[api_form])
    status = ClusterStatus.model_validate(ClusterModel(scenario).status(0.0))
    c, plan, out = boot(slurm_cluster_factory, tmp_path, status)
    check_cluster_matches_plan(c, plan)
    nodes = show_nodes(c)
    # what the default scenario's buckets imply
    hb = nodes["hpc-hb120rsv3-16"]
    assert (hb["CPUTot"], hb["RealMemory"]) == ("120", str(int(448 * 1024 * 0.95)))
    assert "ib" in hb["AvailableFeatures"].split(",")
    f2 = nodes["htc-f2sv2-1"]
    assert (f2["CPUTot"], f2["ThreadsPerCore"], f2["RealMemory"]) == ("2", "2", "3072")
    assert nodes["gpu-nc24adsa100v4-1"]["Gres"] == "gpu:1"
    assert int(f2["Weight"]) < int(hb["Weight"])
    topo = show_topology(c)
    assert topo["hpc-hb120rsv3-pg2"]["Nodes"] == "hpc-hb120rsv3-[5-8]"
    assert topo["hpc-switch"]["Level"] == "1" and topo["root"]["Level"] == "2"
    parts = show_partitions(c)
    assert parts["hpc"]["OverSubscribe"] == "EXCLUSIVE" and parts["htc"]["Default"] == "NO"
    # power saving on each generated partition (the config's defaults), not globally
    assert {(p["SuspendTime"], p["SuspendTimeout"], p["ResumeTimeout"]) for p in parts.values()} == {
        ("600", "300", "1800")}
    # the node map written next to the files agrees with what Slurm knows
    nm = load_nodemap(out)
    assert set(nm.names()) == set(nodes)
    assert nm["hpc-hb120rsv3-5"].placement_group == "hpc-hb120rsv3-pg2"
    # a job can be queued on the generated partitions (the scheduler accepts the nodes)
    job = c.sbatch("-p", "htc", "-N1", "--hold", "--wrap", "true")
    assert c.job(job)["Partition"] == "htc"


def test_gpu_only(slurm_cluster_factory, tmp_path):
    status = make_status(
        array("gpu", bucket("Standard_ND96asr_v4", 96, 900, gpu=8, ib=True, max_count=4, pg=2),
              bucket("Standard_NC6", 6, 56, gpu=1, max_count=2)),
    )
    cfg = make_cfg(slurm={"gpu_device_pattern": "/dev/fake-gpus/nvidia[0-{last}]"})
    c, plan, out = boot(slurm_cluster_factory, tmp_path, status, cfg)
    check_cluster_matches_plan(c, plan)
    gres = (out / "gres.conf").read_text()
    assert "NodeName=gpu-nd96asrv4-[1-4] Name=gpu Count=8 File=/dev/fake-gpus/nvidia[0-7]" in gres
    assert "NodeName=gpu-nc6-[1-2] Name=gpu Count=1 File=/dev/fake-gpus/nvidia0" in gres
    topo = show_topology(c)
    assert topo["gpu-nd96asrv4-pg2"]["Nodes"] == "gpu-nd96asrv4-[3-4]"


def test_edge_cases_fractional_memory_invalid_and_zero(slurm_cluster_factory, tmp_path):
    status = make_status(
        array(
            "edge",
            bucket("Standard_A4m", 4, 7.5, max_count=3),
            bucket("Standard_Broken", 8, 32, valid=False, reason="Quota\nNodeName=evil State=UP"),
            bucket("Standard_Zero", 2, 8, max_count=0),
        ),
        array("empty", bucket("Standard_Zero", 2, 8, max_count=0)),
    )
    c, plan, out = boot(slurm_cluster_factory, tmp_path, status)
    check_cluster_matches_plan(c, plan)
    nodes = show_nodes(c)
    assert set(nodes) == {"edge-a4m-1", "edge-a4m-2", "edge-a4m-3"}
    assert nodes["edge-a4m-2"]["RealMemory"] == "6656"  # 7.5 GiB - 1 GiB
    assert set(show_partitions(c)) == {"edge"}
    text = (out / "partitions.conf").read_text()
    assert "# skipped nodearray edge bucket Standard_Broken" in text and "Standard_Zero" in text
    assert "evil" not in c.scontrol("-o", "show", "node")


def test_a_hundred_buckets(slurm_cluster_factory, tmp_path):
    buckets = [bucket(f"Standard_T{i}", vcpu=1 + i % 16, memory=2.0 + i * 0.5, max_count=1 + i % 2,
                      gpu=2 if i % 10 == 0 else 0, ib=i % 7 == 0, pg=2) for i in range(100)]
    status = make_status(array("many", *buckets[:60]), array("more", *buckets[60:]))
    c, plan, out = boot(slurm_cluster_factory, tmp_path, status)
    assert len(plan.groups) == 100
    check_cluster_matches_plan(c, plan)


# --------------------------------------------------------------------------- CLI over HTTP


def _write_config(tmp_path: Path, sim, conf_dir: Path) -> Path:
    (tmp_path / "password").write_text(sim.password)
    os.chmod(tmp_path / "password", 0o600)
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        "[cluster]\n"
        f'url = "{sim.url}"\nname = "{sim.cluster_name}"\nusername = "{sim.username}"\n'
        f'password_file = "{tmp_path / "password"}"\n'
        "[paths]\n"
        f'state_dir = "{tmp_path / "state"}"\nlog_dir = "{tmp_path / "log"}"\n'
        "[slurm]\n"
        f'conf_dir = "{conf_dir}"\n'
    )
    return cfg


def _cli(config: Path, *args: str, env: dict | None = None, cluster=None) -> subprocess.CompletedProcess:
    """hpc-bridge partitions; with ``cluster``, with that cluster's Slurm release (in its root)."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("HPC_BRIDGE_PASSWORD", "SLURM_CONF")}
    full_env.update(env or {})
    argv = ["-m", "hpc_bridge", "--config", str(config), "partitions", *args]
    return subprocess.run(
        cluster.command([cluster.python, *argv]) if cluster else [sys.executable, *argv],
        capture_output=True, text=True, timeout=60, cwd=REPO, env=full_env,
    )


def test_cli_against_simulator_then_slurmctld(slurm_cluster_factory, tmp_path):
    from hpc_bridge.sim.server import SimServer

    out = tmp_path / "out"
    with SimServer(str(DEFAULT_SCENARIO)) as sim:
        config = _write_config(tmp_path, sim, tmp_path / "conf")

        p = _cli(config, "--check", "--output-dir", str(out))
        assert p.returncode == 1 and "out of date" in p.stdout, p.stderr
        p = _cli(config, "--diff", "--output-dir", str(out))
        assert p.returncode == 0 and "+NodeName=hpc-hb120rsv3-[1-16]" in p.stdout
        assert not out.exists() or not any(out.iterdir())

        p = _cli(config, "--output-dir", str(out))
        assert p.returncode == 0, p.stderr
        assert {f.name for f in out.iterdir()} == {"partitions.conf", "gres.conf", "topology.conf", "nodemap.json"}
        stats = sim.stats()

        p = _cli(config, "--check", "--output-dir", str(out))
        assert p.returncode == 0 and "up to date" in p.stdout

        # power saving on, as with hpc-bridge (without it 24.11's reconfigure looks every cloud
        # node's name up in DNS, ~10 s each here)
        c = start_cluster(slurm_cluster_factory, [out / "partitions.conf"], topology_conf=out / "topology.conf",
                          gres_conf=out / "gres.conf", prolog_wait_for_nodes=False,
                          resume_program="/bin/true", suspend_program="/bin/true")
        assert "hpc-hb120rsv3-16" in show_nodes(c)
        p = _cli(config, "--output-dir", str(out), "--reconfigure", env={"SLURM_CONF": str(c.conf_path)}, cluster=c)
        assert p.returncode == 0 and "scontrol reconfigure done" in p.stdout, p.stderr
        # 24.11 restarts slurmctld in place for a reconfigure: it answers again shortly after
        c.wait_for(lambda: c.run(["scontrol", "ping"], check=False).returncode == 0, 30, what="slurmctld after reconfigure")
    assert stats  # the simulator answered over HTTP

    # The quota grows: --check notices, the rewrite only appends names, the old file is kept.
    scenario = tomllib.loads(DEFAULT_SCENARIO.read_text())
    htc = next(na for na in scenario["nodearrays"] if na["name"] == "htc")
    htc["buckets"][0]["maxCount"] = 12
    with SimServer(scenario) as sim:
        config = _write_config(tmp_path, sim, tmp_path / "conf")
        p = _cli(config, "--check", "--output-dir", str(out))
        assert p.returncode == 1 and "partitions.conf" in p.stdout
        p = _cli(config, "--output-dir", str(out))
        assert p.returncode == 0, p.stderr
        # new names: scontrol reconfigure cannot take them (22.05 exits), and it says so
        assert "node names change: 4 added (htc-f2sv2-[9-12]): restart slurmctld" in p.stdout, p.stdout
    assert "NodeName=htc-f2sv2-[1-12]" in (out / "partitions.conf").read_text()
    assert "NodeName=htc-f2sv2-[1-8]" in (out / "partitions.conf.bak").read_text()
    assert load_nodemap(out)["htc-f2sv2-12"].machine_type == "Standard_F2s_v2"


def test_cli_errors_are_one_line(tmp_path):
    from hpc_bridge.sim.server import SimServer

    scenario = tomllib.loads(DEFAULT_SCENARIO.read_text())
    scenario["nodearrays"][0]["name"] = "hpc=evil"  # the simulator serves it as any API might
    with SimServer(scenario) as sim:
        config = _write_config(tmp_path, sim, tmp_path / "conf")
        p = _cli(config, "--output-dir", str(tmp_path / "out"))
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "'hpc=evil'" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "out").exists()
