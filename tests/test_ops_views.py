"""Pure parts of the operator commands as table tests: nodes join, usage tables/CSV/chart,
scale progress, install-hooks settings and slurm.conf check, doctor checks, sample config."""

from __future__ import annotations

import csv
import io
import re
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hpc_bridge import doctor, install, scale, slurm_conf, usage
from hpc_bridge.api.models import ClusterUsage, Node
from hpc_bridge.config import config_from_dict
from hpc_bridge.errors import ApiError, ApiUnreachable, AuthError, NotFoundError, TlsError, UsageError
from hpc_bridge.nodes_view import format_age, node_rows, slurm_state_short
from hpc_bridge.slurm import parse_show_node_line
from hpc_bridge.state_records import Operation

REPO = Path(__file__).resolve().parent.parent


def cfg_of(**sections):
    data = {"cluster": {"url": "http://127.0.0.1:1", "name": "c", "username": "u"}}
    for k, v in sections.items():
        data.setdefault(k, {}).update(v)
    return config_from_dict(data)


# --------------------------------------------------------------------------- nodes


@pytest.mark.parametrize(
    "state,flags,want",
    [
        ("IDLE", {"IDLE", "CLOUD", "POWERED_DOWN"}, "idle~"),
        ("MIXED", {"MIXED", "CLOUD", "POWERING_UP"}, "mix#"),
        ("IDLE", {"IDLE", "CLOUD", "POWERING_DOWN"}, "idle%"),
        ("DOWN", {"DOWN", "CLOUD", "POWERED_DOWN", "NOT_RESPONDING"}, "down~"),
        ("IDLE", {"IDLE", "POWER_DOWN"}, "idle!"),
        ("ALLOCATED", {"ALLOCATED"}, "alloc"),
        ("IDLE", {"IDLE", "DRAIN"}, "drain"),
        ("MIXED", {"MIXED", "DRAIN", "NOT_RESPONDING"}, "drng*"),
    ],
)
def test_slurm_state_short(state, flags, want):
    assert slurm_state_short(state, flags) == want


@pytest.mark.parametrize("seconds,want", [(None, None), (5, "5s"), (125, "2m"), (3 * 3600 + 300, "3h05m"),
                                          (2 * 86400 + 4 * 3600, "2d04h")])
def test_format_age(seconds, want):
    assert format_age(seconds) == want


def sn(line):
    return parse_show_node_line(line)


def test_node_rows_join_slurm_cloud_state():
    slurm = {
        "hpc-1": sn("NodeName=hpc-1 State=MIXED+CLOUD+POWERING_UP NodeAddr=hpc-1 Reason=(null)"),
        "hpc-2": sn("NodeName=hpc-2 State=IDLE+CLOUD+POWERED_DOWN NodeAddr=hpc-2"),
        "hpc-10": sn("NodeName=hpc-10 State=DOWN+CLOUD+POWERED_DOWN Reason=quota exceeded [root@2024-01-01T00:00:00]"),
    }
    cloud = [
        Node.from_wire({"Name": "hpc-1", "Template": "hpc", "Status": "Preparing", "TargetState": "Started",
                             "MachineType": "HB120", "PrivateIp": "10.0.0.1", "PlacementGroupId": "pg1",
                             "CreateTime": "2024-01-01T00:00:00Z"}),
        Node.from_wire({"Name": "hpc-2", "Template": "hpc", "Status": "Deallocated", "TargetState": "Deallocated",
                             "MachineType": "HB120", "CreateTime": "2024-01-01T00:00:00Z"}),
        Node.from_wire({"Name": "orphan-1", "Template": "htc", "Status": "Ready", "MachineType": "F2"}),
    ]
    op = Operation(request_id="r1", action="create", nodes=["hpc-1"], started=0, deadline=1e12, outcome="accepted",
                   operation_id="abcdef123456")
    now = 1704067200.0 + 90  # 90 s after CreateTime
    rows = node_rows(slurm, cloud, {"hpc-1": op}, now)
    assert [r.name for r in rows] == ["hpc-1", "hpc-2", "hpc-10", "orphan-1"]  # natural order, union
    r1 = rows[0]
    assert (r1.slurm_state, r1.status, r1.ip, r1.placement_group, r1.machine_type) == (
        "mix#", "Preparing", "10.0.0.1", "pg1", "HB120")
    assert r1.age == 90 and r1.operation == "create accepted (abcdef12)"
    assert rows[1].age is None  # a deallocated node has no running age
    assert rows[2].reason == "quota exceeded" and rows[2].status is None
    assert rows[3].slurm_state is None and rows[3].status == "Ready"
    # filters: a hostlist and states (Slurm short form, flag, or cloud status)
    assert [r.name for r in node_rows(slurm, cloud, {}, now, names=["hpc-2", "hpc-1"])] == ["hpc-1", "hpc-2"]
    assert [r.name for r in node_rows(slurm, cloud, {}, now, states=["down"])] == ["hpc-10"]
    assert [r.name for r in node_rows(slurm, cloud, {}, now, states=["powered_down"])] == ["hpc-2", "hpc-10"]
    assert [r.name for r in node_rows(slurm, cloud, {}, now, states=["ready", "idle~"])] == ["hpc-2", "orphan-1"]
    # closed operations are not "in flight"
    op.outcome = "done"
    assert node_rows(slurm, cloud, {"hpc-1": op}, now)[0].operation is None


def test_node_rows_without_slurm_lists_cloud_nodes_and_uses_nodemap():
    from hpc_bridge.nodemap import NodeMapEntry

    cloud = [Node.from_wire({"Name": "a-1", "Status": "Terminated"}),
             Node.from_wire({"Name": "a-1", "Status": "Ready", "PrivateIp": "10.1.1.1"})]
    rows = node_rows(None, cloud, {}, 0.0, names=["a-1", "a-2"],
                     nodemap={"a-2": NodeMapEntry("arr", "F4", "b", "pg-3", "part")})
    assert rows[0].status == "Ready" and rows[0].ip == "10.1.1.1"  # the live record wins
    assert (rows[1].nodearray, rows[1].machine_type, rows[1].placement_group, rows[1].status) == (
        "arr", "F4", "pg-3", None)


# --------------------------------------------------------------------------- usage

USAGE = {
    "usage": [
        {"start": "2024-05-01T00:00:00Z", "end": "2024-05-02T00:00:00Z",
         "total": {"category": "cluster", "hours": 130.0, "cost": 13.5},
         "breakdown": [
             {"category": "nodearray", "node": "hpc", "hours": 120.0, "cost": 12.0,
              "details": [{"vm_size": "HB120", "hours": 120.0, "core_count": 120, "cost": 12.0}]},
             {"category": "nodearray", "node": "htc", "hours": 10.0, "cost": 1.5,
              "details": [{"vm_size": "F2", "hours": 4.0, "cost": 0.5}, {"vm_size": "F4", "hours": 6.0, "cost": 1.0}]},
             {"category": "nodearray", "node": "gpu", "hours": 0.0, "cost": 0.0},
             {"category": "node", "node": "scheduler", "hours": 4.0, "cost": 0.2},
         ]},
        {"start": "2024-05-02T00:00:00Z", "end": "2024-05-03T00:00:00Z",
         "total": {"category": "cluster", "hours": 240.0, "cost": 24.0},
         "breakdown": [{"category": "nodearray", "node": "hpc", "hours": 240.0, "cost": 24.0,
                        "details": [{"vm_size": "HB120", "hours": 240.0, "cost": 24.0}]}]},
    ]
}


def test_usage_records_summary_and_csv():
    recs = usage.usage_records(ClusterUsage.model_validate(USAGE))
    assert len(recs) == 5  # unused gpu array dropped; head node kept with vm size "-"
    summary = usage.summarize(recs)
    assert [(r["nodearray"], r["vmSize"], r["coreHours"], r["cost"]) for r in summary] == [
        ("hpc", "HB120", 360.0, 36.0), ("htc", "F4", 6.0, 1.0), ("htc", "F2", 4.0, 0.5), ("scheduler", "-", 4.0, 0.2)]
    assert usage.totals(recs) == {"coreHours": 374.0, "cost": 37.7}
    rows = list(csv.DictReader(io.StringIO(usage.to_csv(recs))))
    assert list(rows[0]) == usage.CSV_FIELDS and len(rows) == 5
    assert rows[1]["nodearray"] == "htc" and float(rows[1]["cost"]) == 0.5


def test_usage_without_cost_data():
    data = {"usage": [{"start": "2024-05-01T00:00:00Z", "end": "2024-05-02T00:00:00Z",
                       "total": {"category": "cluster", "hours": 5.0},
                       "breakdown": [{"category": "nodearray", "node": "a", "hours": 5.0,
                                      "details": [{"vm_size": "F2", "hours": 5.0}]}]}]}
    recs = usage.usage_records(ClusterUsage.model_validate(data))
    assert usage.totals(recs)["cost"] is None
    assert usage.table_rows(usage.summarize(recs), usage.totals(recs))[-1] == ["TOTAL", "", "5.0", None]
    with pytest.raises(UsageError, match="--metric hours"):
        usage.chart(recs, "cost")
    usage.chart(recs, "hours")


@pytest.mark.parametrize("top,step", [(0, 1.0), (7, 2.0), (10, 2.0), (95, 20.0), (123, 25.0), (0.3, 0.1), (4e5, 1e5)])
def test_nice_step(top, step):
    assert usage.nice_step(top) == pytest.approx(step)


@pytest.mark.parametrize(
    "tf,f,t,want,err",
    [(None, None, None, None, None), ("lastMonth", None, None, "lastMonth", None),
     (None, "2024-05-01", "2024-05-03", "custom", None), ("custom", "2024-05-01", None, None, "go together"),
     ("custom", None, None, None, "needs --from"), ("lastMonth", "2024-05-01", "2024-05-02", None, "custom"),
     (None, "yesterday", "2024-05-02", None, "ISO-8601")],
)
def test_usage_options(tf, f, t, want, err):
    if err:
        with pytest.raises(UsageError, match=err):
            usage.check_options(tf, f, t, None)
    else:
        assert usage.check_options(tf, f, t, None) == want


def test_usage_chart_stacks_and_escapes():
    data = {"usage": [dict(USAGE["usage"][0], breakdown=[
        {"category": "nodearray", "node": "a<&>", "hours": 2.0, "cost": 2.0,
         "details": [{"vm_size": "X", "hours": 2.0, "cost": 2.0}]}] + USAGE["usage"][0]["breakdown"])]
        + USAGE["usage"][1:]}
    recs = usage.usage_records(ClusterUsage.model_validate(data))
    c = usage.chart(recs, "cost", "daily")
    assert len(c.segments) == 6 and len(c.legend) == 5
    # the second bar (24.0) is twice as tall as the hpc part of the first (12.0)
    hpc = [s for s in c.segments if s.title.endswith("hpc / HB120: $12.00") or s.title.endswith("hpc / HB120: $24.00")]
    assert hpc[1].height == pytest.approx(2 * hpc[0].height, rel=1e-3)
    # every bar stands on the axis and stays inside the plot
    base = c.plot_top + c.plot_height
    for s in c.segments:
        assert c.plot_top - 0.01 <= s.y and s.y + s.height <= base + 0.01
    svg = usage.render_svg(c)
    root = ET.fromstring(svg.encode())  # valid XML although a name holds <&>
    assert root.tag.endswith("svg")
    assert "a&lt;&amp;&gt; / X" in svg
    empty = usage.render_svg(usage.chart([], "hours"))
    assert "no usage in this period" in empty
    ET.fromstring(empty.encode())


# --------------------------------------------------------------------------- scale


def test_scale_progress():
    nodes = [Node.from_wire(d) for d in (
        {"Name": "b", "Status": "Ready"}, {"Name": "a", "Status": "Preparing"},
        {"Name": "c", "Status": "Failed", "StatusMessage": "boot failed"})]
    p = scale.progress(nodes)
    assert (p.ready, p.waiting, p.failed, p.done, p.ok) == (["b"], ["a"], {"c": "boot failed"}, False, False)
    assert p.line() == "1/3 Ready (1 Failed, 1 Preparing, 1 Ready)"
    done = scale.progress([Node.from_wire({"Name": "x", "Status": "Ready"})])
    assert done.done and done.ok
    assert scale.progress([]).ok


@pytest.mark.parametrize("nodes,cores,err", [(None, None, "exactly one"), (1, 2, "exactly one"), (-1, None, ">= 0"),
                                             (3, None, None), (None, 0, None)])
def test_scale_target(nodes, cores, err):
    if err:
        with pytest.raises(UsageError, match=err):
            scale.check_target(nodes, cores)
    else:
        scale.check_target(nodes, cores)


# --------------------------------------------------------------------------- install-hooks


def parse(text, files=None, base="/etc/slurm"):
    conf = slurm_conf.SlurmConf(path=f"{base}/slurm.conf")
    slurm_conf.parse_slurm_conf_text(text, conf.path, conf, base, lambda p: (files or {}).get(p))
    return conf


def test_parse_slurm_conf_includes_latest_value_and_records():
    text = ("ClusterName=x\nSuspendTime=10 # comment\nNodeName=n[1-2] CPUs=4 State=CLOUD\n"
            "PartitionName=p Nodes=n[1-2] Default=YES\ninclude extra.conf\nresumeTIMEOUT=300\n"
            "Include /missing/partitions.conf\nSlurmctldParameters=a,\\\nb\n")
    conf = parse(text, {"/etc/slurm/extra.conf": "SuspendTime=20\nResumeTimeout=100\n"})
    assert conf.get("SuspendTime") == "20" and conf.get("ResumeTimeout") == "300"  # latest wins
    assert conf.get("State") is None and conf.get("Nodes") is None  # record lines are not settings
    assert conf.includes == ["/etc/slurm/extra.conf", "/missing/partitions.conf"]
    assert conf.missing_includes == ["/missing/partitions.conf"]
    assert conf.get("slurmctldparameters") == "a,b"


def test_generated_include_file_passes_the_check():
    cfg = cfg_of(resume={"resume_timeout": 900}, slurm={"address_mode": "registration", "conf_dir": "/etc/slurm"})
    settings = install.desired_settings(cfg, "/opt/hooks")
    text = install.include_file_text(cfg, settings, "/etc/hpc-bridge/config.toml")
    assert "SlurmctldParameters=idle_on_node_suspend,cloud_reg_addrs" in text
    assert not re.search(r"(?m)^(SuspendTime|SuspendTimeout|ResumeTimeout)=", text)  # per partition instead
    conf = parse("ClusterName=x\ninclude /etc/slurm/hpc-bridge.conf\n",
                 {"/etc/slurm/hpc-bridge.conf": text, "/etc/slurm/partitions.conf": ""})
    ours = dict(runs_hook=lambda path, hook: True)
    assert install.check_settings(conf, cfg, executable=lambda p: p.startswith("/opt/hooks/"), **ours) == []
    # without executables, the three programs are reported
    keys = [p.key for p in install.check_settings(conf, cfg, executable=lambda p: False, **ours)]
    assert keys == ["ResumeProgram", "SuspendProgram", "ResumeFailProgram"]
    # programs that exist but are not hpc-bridge's (SuspendProgram=/bin/true) are reported too
    problems = install.check_settings(conf, cfg, executable=lambda p: True, runs_hook=lambda p, h: h != "suspend")
    assert [p.key for p in problems] == ["SuspendProgram"] and "not hpc-bridge's suspend hook" in problems[0].message


SITE = ("ClusterName=x\nPrivateData=jobs,usage\nSlurmctldParameters=enable_configless\nGresTypes=gpu\n"
        "TreeWidth=65533\nResumeTimeout=120\nNodeName=adm-static CPUs=2\n")


def test_include_merges_the_sites_list_values_and_leaves_out_what_it_has():
    """The include carries the site's words plus ours for list-valued keys, and leaves out keys
    the site already sets as needed, so slurm.conf never sets one twice."""
    cfg = cfg_of(slurm={"conf_dir": "/etc/slurm"})
    site = parse(SITE)
    values = {s.key: s.value for s in install.desired_settings(cfg, "/opt/hooks", site)}
    assert values["PrivateData"] == "jobs,usage,cloud"
    assert values["SlurmctldParameters"] == "enable_configless,idle_on_node_suspend"
    assert "GresTypes" not in values and "TreeWidth" not in values and "ResumeTimeout" not in values
    text = install.include_file_text(cfg, install.desired_settings(cfg, "/opt/hooks", site), "/c.toml")
    full = parse(SITE + "include /etc/slurm/hpc-bridge.conf\n",
                 {"/etc/slurm/hpc-bridge.conf": text, "/etc/slurm/partitions.conf": ""})
    problems = install.check_settings(full, cfg, executable=lambda p: True, runs_hook=lambda p, h: True,
                                      hooks_dir="/opt/hooks")
    # the site's PrivateData and SlurmctldParameters lines are now set twice: flagged, with the merged value
    assert {p.key for p in problems} == {"PrivateData", "SlurmctldParameters"}
    fix = {p.key: p.fix for p in problems}
    assert fix["PrivateData"].startswith("set PrivateData=jobs,usage,cloud on the line at /etc/slurm/slurm.conf:2")
    # once the site's own lines carry the words, the include leaves both keys out: nothing twice
    site2 = parse(SITE.replace("jobs,usage", "jobs,usage,cloud").replace("enable_configless",
                                                                        "enable_configless,idle_on_node_suspend"))
    assert {s.key for s in install.desired_settings(cfg, "/opt/hooks", site2)} == {
        "ResumeProgram", "SuspendProgram", "ResumeFailProgram", "ResumeRate", "SuspendRate", "TopologyPlugin"}


def test_check_flags_duplicates_that_lose_the_sites_words():
    cfg = cfg_of(slurm={"conf_dir": "/etc/slurm"})
    conf = parse("ClusterName=x\nPrivateData=jobs,usage\ninclude /etc/slurm/hpc-bridge.conf\n",
                 {"/etc/slurm/hpc-bridge.conf": "PrivateData=cloud\nTreeWidth=65533\nTreeWidth=65533\n"})
    problems = {p.key: p for p in install.check_settings(conf, cfg, executable=lambda p: True)}
    assert "jobs,usage are lost" in problems["PrivateData"].message
    assert "/etc/slurm/slurm.conf:2 jobs,usage; /etc/slurm/hpc-bridge.conf:1 cloud" in problems["PrivateData"].message
    assert "set more than once" in problems["TreeWidth"].message


def test_check_reports_every_missing_setting():
    cfg = cfg_of(resume={"resume_timeout": 600})
    conf = parse("ClusterName=x\nResumeProgram=relative/resume\nSuspendTime=300\nPrivateData=jobs\n"
                 "SlurmctldParameters=enable_configless\nGresTypes=mps\n")
    problems = {p.key: p for p in install.check_settings(conf, cfg, executable=lambda p: True)}
    assert set(problems) == {"ResumeProgram", "SuspendProgram", "ResumeFailProgram", "SuspendTime", "ResumeRate",
                             "SuspendRate", "PrivateData", "SlurmctldParameters", "TreeWidth", "GresTypes",
                             "TopologyPlugin", "include"}
    assert "absolute" in problems["ResumeProgram"].message
    assert "the site's own too" in problems["SuspendTime"].message  # a global SuspendTime powers down every node
    assert problems["PrivateData"].fix == "PrivateData=jobs,cloud"
    assert problems["SlurmctldParameters"].fix == "SlurmctldParameters=enable_configless,idle_on_node_suspend"
    assert problems["GresTypes"].fix == "GresTypes=mps,gpu"


def test_check_conf_dir_mismatch():
    cfg = cfg_of(slurm={"conf_dir": "/srv/slurm"})
    conf = parse("ClusterName=x\n")
    assert "conf_dir" in [p.key for p in install.check_settings(conf, cfg)]


def test_wrapper_and_units_text():
    w = install.wrapper_text("resume-fail", "/opt/py/bin/python", "/etc/hpc-bridge/config.toml", "/src")
    assert w.startswith("#!/bin/sh\n")
    assert "exec '/opt/py/bin/python' -m hpc_bridge resume-fail --config \"${HPC_BRIDGE_CONFIG:-/etc/hpc-bridge/config.toml}\" \"$@\"" in w
    with pytest.raises(Exception, match="absolute"):
        install.wrapper_text("resume", "python3", "/c.toml")
    with pytest.raises(Exception, match="character"):
        install.wrapper_text("resume", "/bin/py'thon", "/c.toml")
    units = install.systemd_units("/usr/bin/python3", "/etc/hpc-bridge/config.toml", user="slurm")
    svc, timer = units[install.REPAIR_SERVICE], units[install.REPAIR_TIMER]
    assert "ExecStart=/usr/bin/python3 -m hpc_bridge repair --config /etc/hpc-bridge/config.toml" in svc
    assert "User=slurm" in svc and "Type=oneshot" in svc
    assert f"Unit={install.REPAIR_SERVICE}" in timer and "WantedBy=timers.target" in timer


# --------------------------------------------------------------------------- doctor


def facts(**kw):
    cfg = kw.pop("cfg", None) or cfg_of(slurm={"conf_dir": "/etc/slurm"})
    conf = parse("ResumeTimeout=1800\nResumeProgram=/h/resume\nSuspendProgram=/h/suspend\nResumeFailProgram=/h/rf\n")
    base = dict(config_path="/c.toml", cfg=cfg, password_source="file", status=None, slurm_conf=conf,
                conf_problems=[], partitions_changed=[], slurm_nodes={}, nodemap_names=set(),
                timer_unit="/etc/systemd/system/hpc-bridge-repair.timer", timer_enabled=True, lock_tested=True,
                hook_runs={"ResumeProgram": None, "SuspendProgram": None, "ResumeFailProgram": None},
                running_config={"ResumeProgram": "/h/resume", "SuspendProgram": "/h/suspend",
                                "ResumeFailProgram": "/h/rf", "PrivateData": "jobs,cloud", "SuspendTime": "NONE"})
    base.update(kw)
    return doctor.Facts(**base)


def results(checks):
    return {c.name: c.result for c in checks}


def test_doctor_all_good():
    from hpc_bridge.api.models import ClusterStatus

    status = ClusterStatus.model_validate({"maxCoreCount": 1, "maxCount": 1, "nodearrays": []})
    nodes = {"a-1": sn("NodeName=a-1 State=IDLE+CLOUD+POWERED_DOWN"), "head": sn("NodeName=head State=IDLE")}
    checks = doctor.run_checks(facts(status=status, slurm_nodes=nodes, nodemap_names={"a-1"}, boot_times=[400.0]))
    assert not doctor.failed(checks), [c.line() for c in checks]
    assert all(c.result == doctor.OK for c in checks)


@pytest.mark.parametrize(
    "kw,name,result,fix_has",
    [
        (dict(config_error="config file /c.toml: unknown key cluster.urll"), "config valid", "FAIL", "example-config"),
        (dict(password_error="password file /p is readable by group or others (mode 0644); run: chmod 600 /p"),
         "password file private", "FAIL", "chmod 600"),
        (dict(api_error=ApiUnreachable("GET /x: cluster API unreachable")), "API reachable", "FAIL", "[cluster] url"),
        (dict(api_error=AuthError("GET /x: HTTP 401", status=401)), "credentials accepted", "FAIL", "username"),
        (dict(api_error=NotFoundError("GET /x: HTTP 404 Not Found", status=404)), "cluster found", "FAIL", "[cluster] name"),
        (dict(slurm_conf_error="slurm.conf /etc/slurm/slurm.conf not found"), "slurm.conf readable", "FAIL", "conf_dir"),
        (dict(conf_problems=[install.Problem("ResumeProgram", "ResumeProgram=/h/resume is not an existing executable",
                                             "ResumeProgram=/h/resume")]),
         "slurm.conf hook programs", "FAIL", "install-hooks --write"),
        (dict(conf_problems=[install.Problem("PrivateData", "PrivateData lacks cloud", "PrivateData=cloud")]),
         "slurm.conf PrivateData=cloud", "FAIL", "PrivateData=cloud"),
        (dict(boot_times=[1700.0]), "ResumeTimeout longer than boot time", "FAIL", "resume_timeout = 2610"),
        (dict(conf_problems=[install.Problem("include", "no include", "include /etc/slurm/partitions.conf")]),
         "slurm.conf includes generated files", "FAIL", "include /etc/slurm/partitions.conf"),
        (dict(conf_problems=[install.Problem("TreeWidth", "TreeWidth is 50", "TreeWidth=65533")]),
         "slurm.conf other settings", "FAIL", "TreeWidth=65533"),
        (dict(partitions_changed=["partitions.conf"]), "generated files up to date", "FAIL", "hpc-bridge partitions"),
        (dict(slurm_nodes={"a-1": sn("NodeName=a-1 State=IDLE+CLOUD")}, nodemap_names={"a-2"}),
         "Slurm cloud nodes match the node map", "FAIL", "partitions --reconfigure"),
        (dict(slurm_error="scontrol: no answer"), "Slurm cloud nodes match the node map", "FAIL", "slurmctld"),
        (dict(state_error="cannot read /s/state.json: Permission denied"), "state file readable", "FAIL", "SlurmUser"),
        (dict(timer_unit=None), "repair timer installed", "FAIL", "enable --now"),
        (dict(hook_runs={"ResumeProgram": "/h/resume exited 2: exec: /opt/v/bin/python3: Permission denied"}),
         "hooks run as SlurmUser (root)", "FAIL", "readable by root"),
        (dict(running_config={"ResumeProgram": "/old/resume", "SuspendProgram": "/h/suspend",
                              "ResumeFailProgram": "/h/rf", "PrivateData": "jobs", "SuspendTime": "600 sec"}),
         "slurmctld runs with these settings", "FAIL", "scontrol reconfigure"),
        (dict(timer_enabled=False), "repair timer installed", "FAIL", "enable --now"),
    ],
)
def test_doctor_failures_have_fixes(kw, name, result, fix_has):
    if "config_error" in kw:
        kw["cfg"] = None
        f = doctor.Facts(config_path="/c.toml", **kw)
    else:
        f = facts(**kw)
    checks = doctor.run_checks(f)
    by_name = {c.name: c for c in checks}
    assert by_name[name].result == result, [c.line() for c in checks]
    assert fix_has in by_name[name].fix
    assert doctor.failed(checks)
    assert "fix:" in by_name[name].line() and "\n" in by_name[name].line()


def test_doctor_tls_and_plain_http():
    https = cfg_of(cluster={"url": "https://cc.example.com"})
    r = results(doctor.run_checks(facts(cfg=https, api_error=TlsError("GET /x: certificate verify failed (x)"))))
    assert r["TLS verified"] == "FAIL" and r["API reachable"] == "ok"
    # decided on the error's class, not on its words
    r = results(doctor.run_checks(facts(cfg=https, api_error=ApiUnreachable("GET /x: TLS handshake timed out"))))
    assert r["API reachable"] == "FAIL" and "TLS verified" not in r
    r = results(doctor.run_checks(facts(cfg=cfg_of(cluster={"url": "https://cc.example.com", "verify_tls": False}))))
    assert r["TLS verified"] == "FAIL"
    r = results(doctor.run_checks(facts(cfg=cfg_of(cluster={"url": "http://cc.example.com",
                                                            "allow_plain_http": True}))))
    assert r["TLS verified"] == "FAIL"


def test_doctor_short_resume_timeout_without_observations_warns_only():
    f = facts(cfg=cfg_of(slurm={"conf_dir": "/etc/slurm"}, resume={"resume_timeout": 60}))
    checks = doctor.run_checks(f)
    assert results(checks)["ResumeTimeout longer than boot time"] == "warn"
    assert not doctor.failed(checks)


# --------------------------------------------------------------------------- shipped files


def test_sample_config_parses_as_is_and_uncommented():
    text = (REPO / "templates" / "config.example.toml").read_text()
    assert text == install.shipped_file("config.example.toml")  # what the package ships
    config_from_dict(tomllib.loads(text))
    uncommented = re.sub(r"(?m)^# (\[[a-z.]+\]|[a-z_]+ = .*)$", r"\1", text)
    cfg = config_from_dict(tomllib.loads(uncommented))
    assert cfg.partitions.nodearrays["hpc"].max_nodes == 100
    from hpc_bridge.config import Config, NodearrayConfig

    for section in ("cluster", "paths", "slurm", "resume", "suspend", "repair", "state"):
        for key in Config.keys[section].kind.keys:
            assert re.search(rf"(?m)^(# )?{key} = ", text), f"[{section}] {key} missing from the sample config"
    for key in NodearrayConfig.keys:
        assert re.search(rf"(?m)^(# )?{key} = ", text), f"nodearray key {key} missing from the sample config"


def test_logrotate_snippet_has_the_sites_paths_and_user():
    cfg = cfg_of(paths={"log_dir": "/srv/hb log", "state_dir": "/srv/hb-state/"})
    text = install.logrotate_text(cfg, "root")
    assert '"/srv/hb log/*.log" {\n    su root root\n' in text and "copytruncate" in text
    assert '"/srv/hb-state/state.history.jsonl" {' in text and text.rstrip().endswith("}")
    assert "su nosuchuser nosuchuser" in install.logrotate_text(cfg, "nosuchuser")  # for another host
    with pytest.raises(Exception, match="character"):
        install.logrotate_text(cfg_of(paths={"log_dir": '/srv/"x'}), "root")


def test_boot_times_come_from_the_history_file_too(tmp_path):
    """Closed records leave the state file after keep_closed; doctor still sees how long boots took."""
    from hpc_bridge.state import StateStore
    from hpc_bridge.state_records import DONE, FAILED

    store = StateStore(tmp_path / "state.json", keep_closed=60.0)
    with store.transaction(now=0.0) as state:
        booted = state.begin("create", ["a-1"], "booted", now=0.0, deadline=1.0)
        booted.ready = 400.0
        booted.close(DONE, 400.0, "all nodes Ready")
        state.begin("create", ["a-2"], "refused", now=0.0, deadline=1.0).close(FAILED, 5.0)
        # Ready after 10 s, but closed by repair's next run: no boot time at all, not 198 s
        state.begin("create", ["a-3"], "resolved", now=0.0, deadline=1.0).close(DONE, 198.0, "resolved by repair")
    with store.transaction(now=1000.0):
        pass
    assert store.read().operations == {}
    assert doctor.boot_times(store.history()) == [400.0]


def test_usage_svg_needs_a_file_name(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "hpc_bridge", "--config", str(tmp_path / "none.toml"), "usage",
                           "--svg", ""], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr == "hpc-bridge usage: error: --svg needs a file name\n", proc.stderr


@pytest.mark.parametrize(
    "entry,problem",
    [
        (doctor.FileFacts("/s", 0, 0o040700), None),
        (doctor.FileFacts("/s/state.json", 0, 0o100600), None),
        (doctor.FileFacts("/s/state.json", 5, 0o100600), "/s/state.json owned by uid 5, not by root"),
        (doctor.FileFacts("/s", 0, 0o040755), "/s mode 0755: open to group or others"),
        (doctor.FileFacts("/l/x.log", 0, 0o100666), "/l/x.log mode 0666: writable by group or others"),
        (doctor.FileFacts("/l/x.log", 0, 0o120777), "/l/x.log is a symbolic link"),
        (doctor.FileFacts("/s/state.json", 0, 0o010600), "/s/state.json is not a regular file"),
    ],
)
def test_doctor_ownership_check_names_each_wrong_entry(entry, problem):
    check = next(c for c in doctor.check_ownership(facts(files=[entry])))
    if problem is None:
        assert check.result == doctor.OK
    else:
        assert check.result == doctor.FAIL and problem in check.detail
    missing = doctor.check_ownership(facts(slurm_user="slurm", slurm_uid=None))
    assert missing[0].result == doctor.FAIL and "'slurm'" in missing[0].detail


def test_status_says_which_vm_sizes_are_out_of_service():
    from hpc_bridge.state_records import Cooloff
    from hpc_bridge.status import service_of

    assert service_of(None, 100.0) == "yes"
    assert service_of(Cooloff(until=50.0, reason="x"), 100.0) == "yes"  # expired
    assert service_of(Cooloff(until=200.0, reason="x"), 100.0).startswith("cool-off until ")
    assert service_of(Cooloff(until=None, reason="x"), 100.0) == "held: hpc-bridge clear-hold"


def test_table_cells_are_one_line_with_control_characters_escaped():
    from hpc_bridge.table import format_table

    text = format_table(["name", "message"], [["a-1", "boot failed\n\x1b[2Jcleared\x07"]])
    assert text.splitlines()[1] == "a-1   boot failed\\n\\x1b[2Jcleared\\x07"
    assert "\x1b" not in text and "\x07" not in text

@pytest.mark.parametrize("status", ["Terminated", "Off", "Deallocated", "Terminating", "Deallocating", "Stopping",
                                    "Removing"])
def test_scale_progress_counts_a_node_that_will_not_come_up_as_failed(status):
    # Gone or on its way down before it was Ready: waiting for it would only run into --timeout.
    p = scale.progress([Node.from_wire({"Name": "x", "Status": status})])
    assert (p.failed, p.waiting, p.done, p.ok) == ({"x": status}, [], True, False)


@pytest.mark.parametrize("status", ["Acquiring", "Preparing", "Allocation", "Validation", "Starting", "Brand-new"])
def test_scale_progress_waits_for_a_node_on_its_way_up(status):
    p = scale.progress([Node.from_wire({"Name": "x", "Status": status})])
    assert (p.failed, p.waiting, p.done) == ({}, ["x"], False)


# --------------------------------------------------------------------------- JSON for scripts: one style

CAMEL = re.compile(r"^[a-z][A-Za-z0-9]*$")


def test_hook_and_repair_json_keys_are_camel_case(capsys):
    """Every key hpc-bridge itself names in --json output is camelCase (the API's own records
    keep the API's names); node names, actions and bucket keys are data, not keys we name."""
    import argparse
    import json

    from hpc_bridge.cli import hooks
    from hpc_bridge.repair import GraceWait, RepairAction, RepairReport
    from hpc_bridge.resume import ResumeReport
    from hpc_bridge.suspend import SuspendReport

    for report in (ResumeReport(names=1, down={"htc_1": "why"}, api_calls=2, scontrol_calls=1),
                   SuspendReport(names=1, by_action={"terminate": ["htc-1"]}, keep_alive=["htc-2"], api_calls=1)):
        hooks._hook_result(argparse.Namespace(json=True, command="x"), report, report.ok)
        data = json.loads(capsys.readouterr().out)
        assert all(CAMEL.match(k) for k in data), sorted(data)
        assert data["apiCalls"] >= 1 and "api_calls" not in data
    action = RepairAction("htc-1", "IDLE+CLOUD", "Ready", "terminate", "leaked", drift="leaked_vm", node_id="n1",
                          slurm_reason="r", address=("10.0.0.1", "h"), request_id="q", cooloff="htc/F2")
    report = RepairReport(actions=[action], waiting=[GraceWait("htc-1", "terminate", "leaked", 1.0)], dry_run=True)
    data = report.to_json()
    keys = set(data) | {k for a in data["actions"] for k in a} | {k for w in data["waiting"] for k in w}
    assert all(CAMEL.match(k) for k in keys), sorted(keys)
    assert data["actions"][0]["slurmState"] == "IDLE+CLOUD" and data["actions"][0]["nodeId"] == "n1"


def test_usage_csv_columns_are_the_json_interval_keys():
    record = usage.UsageRecord("2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z", "htc", "F2", 1.0, 0.5)
    header = next(csv.reader(io.StringIO(usage.to_csv([record]))))
    assert header == list(record.to_json())
