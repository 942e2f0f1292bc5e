"""The pure partition plan: buckets -> node groups, nodesets, partitions, gres, topology, node map.

Table tests for the rules and hypothesis property tests for the invariants (no overlapping
names, memory below the VM's, GPU counts, placement blocks, names stable when counts change).
"""

from __future__ import annotations

import json
import re
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpc_bridge.api.models import ClusterStatus
from hpc_bridge.config import config_from_dict
from hpc_bridge.errors import ConfigError
from hpc_bridge.nodemap import NodeMap, NodeMapEntry, NodeRange, dump_nodemap, load_nodemap, parse_nodemap
from hpc_bridge.partitions import diff_outputs, render, write_outputs
from hpc_bridge.partitions_plan import comment_text, plan_partitions, real_memory_mb, size_tag

# --------------------------------------------------------------------------- builders


def bucket(
    machine_type: str,
    vcpu: int = 4,
    memory: float = 16.0,
    *,
    gpu: int = 0,
    ib: bool = False,
    max_count: int = 10,
    pg: int = 0,
    pcpu: int | None = None,
    valid: bool = True,
    reason: str = "",
    bucket_id: str | None = None,
    active_nodes: list[str] | None = None,
    max_core_count: int | None = None,
) -> dict:
    b = {
        "bucketId": bucket_id or f"bid-{machine_type}",
        "definition": {"machineType": machine_type},
        "virtualMachine": {
            "vcpuCount": vcpu,
            "pcpuCount": pcpu or vcpu,
            "memory": memory,
            "gpuCount": gpu,
            "infiniband": ib,
        },
        "maxCount": max_count,
        "maxCoreCount": max_core_count if max_core_count is not None else max_count * vcpu,
        "maxPlacementGroupSize": pg,
        "valid": valid,
        "invalidReason": reason,
    }
    if active_nodes is not None:
        b["activeNodes"] = active_nodes
    return b


def array(name: str, *buckets: dict, max_count: int = 1000, max_core_count: int = 10**6) -> dict:
    return {"name": name, "maxCount": max_count, "maxCoreCount": max_core_count, "buckets": list(buckets)}


def make_status(*arrays: dict, max_count: int = 10**5, max_core_count: int = 10**7) -> ClusterStatus:
    return ClusterStatus.model_validate({"maxCount": max_count, "maxCoreCount": max_core_count, "nodearrays": list(arrays)})


def make_cfg(**sections) -> object:
    data = {"cluster": {"url": "http://127.0.0.1:1", "name": "demo", "username": "u"}}
    data.update(sections)
    return config_from_dict(data)


def default_status() -> ClusterStatus:
    """Like the simulator's default scenario: hpc (IB, placement groups), htc (2 sizes), gpu."""
    return make_status(
        array("hpc", bucket("Standard_HB120rs_v3", 120, 448.0, ib=True, max_count=16, pg=4)),
        array(
            "htc",
            bucket("Standard_F2s_v2", 2, 4.0, pcpu=1, max_count=8),
            bucket("Standard_F4s_v2", 4, 8.0, pcpu=2, max_count=8),
        ),
        array("gpu", bucket("Standard_NC24ads_A100_v4", 24, 220.0, gpu=1, max_count=4)),
        max_count=40,
        max_core_count=2400,
    )


def expand_simple(expr: str) -> list[str]:
    """Expand the expressions the plan writes (`p[a-b]`, `p`, joined by ','), for checking."""
    out = []
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\])?", expr):
        m = re.fullmatch(r"(.*)\[(\d+)-(\d+)\]", part)
        if m:
            out.extend(f"{m.group(1)}{i}" for i in range(int(m.group(2)), int(m.group(3)) + 1))
        else:
            out.append(part)
    return out


def by_type(plan):
    return {g.machine_type: g for g in plan.groups}


# --------------------------------------------------------------------------- table tests


def test_default_scenario_plan():
    plan = plan_partitions(default_status(), make_cfg())
    g = by_type(plan)
    assert set(g) == {"Standard_HB120rs_v3", "Standard_F2s_v2", "Standard_F4s_v2", "Standard_NC24ads_A100_v4"}
    hb = g["Standard_HB120rs_v3"]
    assert hb.nodes == "hpc-hb120rsv3-[1-16]"
    assert (hb.cpus, hb.threads_per_core, hb.gpus, hb.placement_group_size) == (120, 1, 0, 4)
    assert hb.real_memory == int(448 * 1024 * 0.95)  # 95 % is lower than memory - 1 GiB
    assert hb.features == ("Standard_HB120rs_v3", "hpc", "ib", "cloud")
    f2 = g["Standard_F2s_v2"]
    assert f2.nodes == "htc-f2sv2-[1-8]"
    assert (f2.cpus, f2.threads_per_core, f2.cores_per_socket) == (2, 2, 1)
    assert f2.real_memory == 3 * 1024  # 4 GiB - 1 GiB is lower than 95 %
    assert g["Standard_NC24ads_A100_v4"].gpus == 1
    assert "gpu" in g["Standard_NC24ads_A100_v4"].features
    # smaller sizes preferred
    assert f2.weight < g["Standard_F4s_v2"].weight < hb.weight < g["Standard_NC24ads_A100_v4"].weight

    parts = {p.name: p for p in plan.partitions}
    assert set(parts) == {"hpc", "htc", "gpu"}
    assert parts["hpc"].exclusive and not parts["htc"].exclusive and not parts["gpu"].exclusive
    assert not [p.name for p in plan.partitions if p.default]  # none unless the config asks: the site's stays
    assert parts["htc"].nodesets == ("htc-nodes",)
    ns = {n.name: n for n in plan.nodesets}
    assert ns["htc-nodes"].nodes == "htc-f2sv2-[1-8],htc-f4sv2-[1-8]"

    assert [(l.nodes, l.count, l.file) for l in plan.gres] == [("gpu-nc24adsa100v4-[1-4]", 1, "/dev/nvidia0")]

    sw = {s.name: s for s in plan.switches}
    assert [sw[f"hpc-hb120rsv3-pg{k}"].nodes for k in (1, 2, 3, 4)] == [
        "hpc-hb120rsv3-[1-4]", "hpc-hb120rsv3-[5-8]", "hpc-hb120rsv3-[9-12]", "hpc-hb120rsv3-[13-16]"]
    assert sw["hpc-switch"].switches == "hpc-hb120rsv3-pg1,hpc-hb120rsv3-pg2,hpc-hb120rsv3-pg3,hpc-hb120rsv3-pg4"
    assert sw["root"].switches == "gpu-switch,hpc-switch,htc-switch"
    assert sw["htc-f2sv2-all"].nodes == "htc-f2sv2-[1-8]"
    assert sw["htc-switch"].switches == "htc-f2sv2-all,htc-f4sv2-all"

    nm = plan.nodemap()
    assert nm.cluster == "demo"
    assert nm.get("hpc-hb120rsv3-5") == NodeMapEntry("hpc", "Standard_HB120rs_v3", "bid-Standard_HB120rs_v3", "hpc-hb120rsv3-pg2", "hpc")
    assert nm.get("htc-f4sv2-8").placement_group is None
    assert nm.get("htc-f4sv2-9") is None
    assert len(nm) == 16 + 8 + 8 + 4


@pytest.mark.parametrize(
    "machine_type, tag",
    [
        ("Standard_F4s_v2", "f4sv2"),
        ("Standard_HB120rs_v3", "hb120rsv3"),
        ("Standard_NC24ads_A100_v4", "nc24adsa100v4"),
        ("Basic_A1", "a1"),
        ("standard_d2", "d2"),
        ("Standard_", "standard"),
        ("m5.large", "m5large"),
    ],
)
def test_size_tag(machine_type, tag):
    assert size_tag(machine_type) == tag


@pytest.mark.parametrize(
    "memory_gb, reserve_gb, fraction, expected",
    [
        (4.0, 1.0, 0.05, 3072),  # memory - 1 GiB
        (448.0, 1.0, 0.05, int(448 * 1024 * 0.95)),  # 95 %
        (7.5, 1.0, 0.05, 6656),  # fractional: 7680 - 1024
        (0.75, 1.0, 0.05, int(0.75 * 1024 * 0.95)),  # tiny VM: only the fraction
        (16.0, 2.0, 0.0, 14336),
        (16.0, 0.0, 0.10, int(16 * 1024 * 0.9)),
    ],
)
def test_real_memory(memory_gb, reserve_gb, fraction, expected):
    cfg = make_cfg(partitions={"nodearrays": {"a": {"memory_reserve_gb": reserve_gb, "memory_reserve_fraction": fraction}}})
    assert real_memory_mb(memory_gb, cfg.partitions.for_array("a")) == expected


def test_fractional_memory_bucket():
    plan = plan_partitions(make_status(array("a", bucket("Standard_A4m", 4, 7.5))), make_cfg())
    (g,) = plan.groups
    assert g.real_memory == 6656 < 7.5 * 1024


def test_invalid_and_zero_capacity_buckets_are_skipped_with_comment():
    status = make_status(
        array(
            "a",
            bucket("Standard_Good", max_count=3),
            bucket("Standard_Bad", valid=False, reason="Quota exceeded\nNodeName=evil"),
            bucket("Standard_Zero", max_count=0),
        ),
        array("b", bucket("Standard_Zero", max_count=0)),
    )
    plan = plan_partitions(status, make_cfg())
    assert [g.machine_type for g in plan.groups] == ["Standard_Good"]
    text = "\n".join(plan.comments)
    assert "Standard_Bad" in text and "invalid: Quota exceeded NodeName=evil" in text
    assert "Standard_Zero" in text and "no capacity: maxCount 0" in text
    assert "nodearray b: no usable buckets" in text
    assert [p.name for p in plan.partitions] == ["a"]
    files = render(plan)
    # the hostile reason only appears inside a comment line
    for line in files["partitions.conf"].splitlines():
        if "evil" in line:
            assert line.startswith("#")


def test_counts_bounded_by_array_cluster_and_cores():
    status = make_status(
        array("a", bucket("Standard_X", 8, 32, max_count=100, max_core_count=800), max_count=50),
        array("b", bucket("Standard_Y", 8, 32, max_count=100, max_core_count=80)),
        array("c", bucket("Standard_Z", 8, 32, max_count=100), max_core_count=160),
        max_count=60,
    )
    g = by_type(plan_partitions(status, make_cfg()))
    assert g["Standard_X"].count == 50
    assert g["Standard_Y"].count == 10
    assert g["Standard_Z"].count == 20
    status = make_status(array("a", bucket("Standard_X", max_count=100)), max_count=7)
    assert plan_partitions(status, make_cfg()).groups[0].count == 7


def test_max_nodes_override_and_zero():
    status = make_status(array("a", bucket("Standard_X", max_count=3)), array("b", bucket("Standard_Y", max_count=3)))
    cfg = make_cfg(partitions={"nodearrays": {"a": {"max_nodes": 100}, "b": {"max_nodes": 0}}})
    plan = plan_partitions(status, cfg)
    assert [(g.machine_type, g.count) for g in plan.groups] == [("Standard_X", 100)]
    assert any("max_nodes = 0" in c for c in plan.comments)


def test_active_nodes_keep_their_names_when_max_count_drops():
    status = make_status(array("a", bucket("Standard_X", max_count=2, active_nodes=["a-x-5", "a-x-1", "other-3"])))
    (g,) = plan_partitions(status, make_cfg()).groups
    assert g.count == 5
    assert any("active" in n for n in g.notes)


def test_gpu_only_cluster():
    status = make_status(array("gpu", bucket("Standard_ND96asr_v4", 96, 900, gpu=8, ib=True, max_count=2, pg=2)))
    plan = plan_partitions(status, make_cfg(slurm={"gpu_device_pattern": "/tmp/fake/nvidia[0-{last}]"}))
    (g,) = plan.groups
    assert g.gpus == 8
    assert plan.gres[0].file == "/tmp/fake/nvidia[0-7]" and plan.gres[0].count == 8
    assert not plan.partitions[0].default and plan.partitions[0].exclusive
    assert "Gres=gpu:8" in render(plan)["partitions.conf"]


def test_unmanaged_and_renamed_partitions():
    status = default_status()
    cfg = make_cfg(
        partitions={
            "managed_nodearrays": ["hpc", "htc"],
            "nodearrays": {
                "htc": {"partition": "batch", "default": True, "max_time": "1-00:00:00", "def_mem_per_cpu": 1000,
                        "weight": 50},
                "hpc": {"exclusive": False, "placement_groups": False},
            },
        }
    )
    plan = plan_partitions(status, cfg)
    parts = {p.name: p for p in plan.partitions}
    assert set(parts) == {"hpc", "batch"}
    assert parts["batch"].default and not parts["hpc"].default
    assert parts["batch"].max_time == "1-00:00:00" and parts["batch"].def_mem_per_cpu == 1000
    assert not parts["hpc"].exclusive
    assert all(g.placement_group_size == 0 for g in plan.groups)
    g = by_type(plan)
    assert (g["Standard_F2s_v2"].weight, g["Standard_F4s_v2"].weight) == (50, 51)
    assert g["Standard_F2s_v2"].partition == "batch"
    assert "Standard_NC24ads_A100_v4" not in g
    assert any("nodearray gpu: not managed" in c for c in plan.comments)


def test_power_saving_is_set_on_each_generated_partition_only():
    """SuspendTime & co go on the generated partitions (never global), so Slurm powers down
    only the cloud nodes; from [suspend] and [resume] resume_timeout, in whole seconds."""
    cfg = make_cfg(suspend={"suspend_time": 120, "suspend_timeout": 60.5}, resume={"resume_timeout": 900})
    text = render(plan_partitions(default_status(), cfg))["partitions.conf"]
    lines = [l for l in text.splitlines() if l.startswith("PartitionName=")]
    assert len(lines) == 3
    assert all(l.endswith(" SuspendTime=120 SuspendTimeout=61 ResumeTimeout=900") for l in lines), lines
    assert not re.search(r"(?m)^Suspend", text)
    assert all(" Default=NO " in l for l in lines)
    cfg = make_cfg(partitions={"nodearrays": {"htc": {"default": True}}})
    text = render(plan_partitions(default_status(), cfg))["partitions.conf"]
    assert [l.split()[0] for l in text.splitlines() if " Default=YES " in l] == ["PartitionName=htc"]


def test_site_nodes_get_a_leaf_switch_under_the_root():
    """topology/tree schedules only nodes under a switch: the site's own nodes (from slurm.conf)
    get one, generated names among them are not counted twice."""
    status = make_status(array("htc", bucket("Standard_F2s_v2", 2, 4, max_count=2)))
    plan = plan_partitions(status, make_cfg(), ["adm-static", "onprem-1", "onprem-2", "htc-f2sv2-1"])
    sw = {s.name: s for s in plan.switches}
    assert sw["site"].nodes == "adm-static,onprem-[1-2]"
    assert sw["root"].switches == "htc-switch,site"
    assert "SwitchName=site Nodes=adm-static,onprem-[1-2]" in render(plan)["topology.conf"]
    assert "site" not in {s.name for s in plan_partitions(status, make_cfg(), ["htc-f2sv2-2"]).switches}


def test_two_arrays_share_a_partition():
    status = make_status(array("a", bucket("Standard_X")), array("b", bucket("Standard_Y")))
    cfg = make_cfg(partitions={"nodearrays": {"a": {"partition": "p"}, "b": {"partition": "p"}}})
    (p,) = plan_partitions(status, cfg).partitions
    assert p.nodesets == ("a-nodes", "b-nodes")
    cfg = make_cfg(partitions={"nodearrays": {"a": {"partition": "p"}, "b": {"partition": "p", "max_time": "10"}}})
    with pytest.raises(ConfigError, match="partition p"):
        plan_partitions(status, cfg)


@pytest.mark.parametrize(
    "where, value",
    [
        ("array", "hpc\nSlurmUser=evil"),
        ("array", "a=b"),
        ("array", "a b"),
        ("array", "a,b"),
        ("array", "a#b"),
        ("array", "a'b"),
        ("array", 'a"b'),
        ("array", ""),
        ("array", "-lead"),
        ("machine", "Standard_F4\nNodeName=x"),
        ("machine", "Standard F4"),
        ("machine", "F4=1"),
        ("machine", "F4,ib"),
        ("machine", "F4|x"),
        ("partition", "p q"),
        ("partition", "p\n"),
        ("partition", "p=q"),
    ],
)
def test_hostile_names_are_rejected(where, value):
    name, mt, cfg = "a", "Standard_X", make_cfg()
    if where == "array":
        name = value
    elif where == "machine":
        mt = value
    else:
        cfg = make_cfg(partitions={"nodearrays": {"a": {"partition": value}}})
    status = make_status(array(name, bucket(mt)))
    with pytest.raises(ConfigError) as err:
        plan_partitions(status, cfg)
    msg = str(err.value)
    assert "\n" not in msg and repr(value) in msg


def test_bad_max_time_and_gpu_pattern_rejected():
    status = make_status(array("a", bucket("Standard_X", gpu=2)))
    with pytest.raises(ConfigError, match="max_time"):
        plan_partitions(status, make_cfg(partitions={"nodearrays": {"a": {"max_time": "1 day"}}}))
    with pytest.raises(ConfigError, match="gpu_device_pattern"):
        plan_partitions(status, make_cfg(slurm={"gpu_device_pattern": "/dev/nv idia[0-{last}]"}))


def test_array_names_made_hostname_safe_and_collisions_refused():
    plan = plan_partitions(make_status(array("GPU_Big.v2", bucket("Standard_X"))), make_cfg())
    assert plan.groups[0].prefix == "gpu-big-v2-x-"
    assert "GPU_Big.v2" in plan.groups[0].features
    with pytest.raises(ConfigError, match="both give node names"):
        plan_partitions(make_status(array("a_b", bucket("Standard_X")), array("a-b", bucket("Standard_X"))), make_cfg())


def test_duplicate_machine_type_in_one_array_is_skipped():
    status = make_status(array("a", bucket("Standard_X", bucket_id="b1"), bucket("Standard_X", bucket_id="b2"),
                               bucket("standard_x", bucket_id="b3")))
    plan = plan_partitions(status, make_cfg())
    assert [(g.machine_type, g.bucket_id) for g in plan.groups] == [("Standard_X", "b1")]
    assert sum("same node names" in c for c in plan.comments) == 2


def test_too_long_names_refused():
    status = make_status(array("a" * 55, bucket("Standard_HB120rs_v3", max_count=10)))
    with pytest.raises(ConfigError, match="longer than 63"):
        plan_partitions(status, make_cfg())


def test_a_hundred_buckets():
    buckets = [bucket(f"Standard_T{i}", vcpu=1 + i % 8, memory=2.0 + i, max_count=1 + i % 3, gpu=i % 5 == 0 and 2 or 0)
               for i in range(100)]
    plan = plan_partitions(make_status(array("many", *buckets)), make_cfg())
    assert len(plan.groups) == 100
    names = plan.names()
    assert len(names) == len(set(names)) == sum(1 + i % 3 for i in range(100))
    assert len(plan.gres) == 20
    assert expand_simple(plan.nodesets[0].nodes) == names


def test_plan_is_independent_of_api_order():
    s1 = default_status()
    s2 = make_status(*[
        {**na.to_wire(), "buckets": list(reversed([b.to_wire() for b in na.buckets]))}
        for na in reversed(s1.nodearrays)
    ], max_count=40, max_core_count=2400)
    assert render(plan_partitions(s1, make_cfg())) == render(plan_partitions(s2, make_cfg()))


def test_rendered_lines_are_plain_key_values():
    files = render(plan_partitions(default_status(), make_cfg()))
    for name in ("partitions.conf", "gres.conf", "topology.conf"):
        for line in files[name].splitlines():
            if not line or line.startswith("#"):
                continue
            for token in line.split(" "):
                key, _, value = token.partition("=")
                assert key and value and re.fullmatch(r"[A-Za-z]+", key), (name, line)
                assert re.fullmatch(r"[A-Za-z0-9_.,:/\[\]-]+", value), (name, line)
    assert json.loads(files["nodemap.json"])["version"] == 2


def test_custom_template_dir(tmp_path):
    for name in ("partitions.conf.j2", "gres.conf.j2", "topology.conf.j2"):
        (tmp_path / name).write_text("{% for g in plan.groups %}" + name + " {{ g.nodes }}\n{% endfor %}")
    cfg = make_cfg(slurm={"template_dir": str(tmp_path)})
    files = render(plan_partitions(default_status(), cfg), cfg.slurm.template_dir)
    assert files["gres.conf"].splitlines()[0] == "gres.conf.j2 gpu-nc24adsa100v4-[1-4]"
    with pytest.raises(ConfigError, match="not a directory"):
        render(plan_partitions(default_status(), cfg), str(tmp_path / "missing"))


@pytest.mark.parametrize("text,expected", [
    ("{{ 1 / 0 }}", "template partitions.conf.j2 failed: ZeroDivisionError"),
    (b"\xff\xfe{{ x }}", "template partitions.conf.j2: not valid UTF-8"),
])
def test_broken_custom_template_is_one_config_error(tmp_path, text, expected):
    for name in ("partitions.conf.j2", "gres.conf.j2", "topology.conf.j2"):
        (tmp_path / name).write_text("")
    target = tmp_path / "partitions.conf.j2"
    target.write_bytes(text) if isinstance(text, bytes) else target.write_text(text)
    cfg = make_cfg(slurm={"template_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match=re.escape(expected)):
        render(plan_partitions(default_status(), cfg), cfg.slurm.template_dir)


def test_node_map_too_big_or_overflowing_is_malformed():
    group = {"prefix": "n-", "first": 1, "nodearray": "a", "machine_type": "m", "bucket_id": "b", "partition": "a"}
    for last in (10**11, float("inf")):
        text = json.dumps({"version": 2, "cluster": "c", "groups": [{**group, "last": last}]})
        with pytest.raises(ConfigError, match="node map x is malformed"):
            parse_nodemap(text, "x")
    with pytest.raises(ConfigError, match="nested too deeply"):
        parse_nodemap("[" * 100_000 + "]" * 100_000, "x")


def test_comment_text_is_harmless():
    assert comment_text("a\nb\r\x00c\\") == "a b c"
    assert "\n" not in comment_text("x\u2028y")


# --------------------------------------------------------------------------- writing


def test_write_outputs_atomic_with_backup_and_diff(tmp_path):
    out = tmp_path / "etc"
    files = render(plan_partitions(default_status(), make_cfg()))
    assert diff_outputs(files, out).count("+++ ") == 4
    assert sorted(write_outputs(files, out)) == sorted(files)
    assert not list(out.glob("*.bak"))
    assert write_outputs(files, out) == []
    assert diff_outputs(files, out) == ""
    assert {p.name for p in out.iterdir()} == set(files)

    status = make_status(array("htc", bucket("Standard_F2s_v2", 2, 4.0, max_count=9)))
    new = render(plan_partitions(status, make_cfg()))
    d = diff_outputs(new, out)
    assert "+NodeName=htc-f2sv2-[1-9]" in d and "-NodeName=htc-f2sv2-[1-8]" in d
    changed = write_outputs(new, out)
    assert "gres.conf" in changed and "partitions.conf" in changed
    assert (out / "partitions.conf.bak").read_text() == files["partitions.conf"]
    assert (out / "partitions.conf").read_text() == new["partitions.conf"]
    assert oct((out / "partitions.conf").stat().st_mode & 0o777) == "0o644"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert load_nodemap(out).get("htc-f2sv2-9").machine_type == "Standard_F2s_v2"


# --------------------------------------------------------------------------- node map


def test_nodemap_missing_and_corrupt(tmp_path):
    with pytest.raises(ConfigError, match=r"nodemap.json not found; run `hpc-bridge partitions`"):
        load_nodemap(tmp_path)
    (tmp_path / "nodemap.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"nodemap.json is not valid JSON.*hpc-bridge partitions"):
        load_nodemap(tmp_path)
    (tmp_path / "nodemap.json").write_text('{"version": 2, "cluster": "c", "groups": [{"prefix": "a-"}]}')
    with pytest.raises(ConfigError, match="malformed.*hpc-bridge partitions"):
        load_nodemap(tmp_path / "nodemap.json")
    (tmp_path / "nodemap.json").write_text('[1, 2]')
    with pytest.raises(ConfigError, match="format version"):
        load_nodemap(tmp_path)


def test_nodemap_version1_flat_format(tmp_path):
    (tmp_path / "nodemap.json").write_text(json.dumps({
        "version": 1, "cluster": "c",
        "nodes": {"hpc-1": {"nodearray": "hpc", "machine_type": "M", "bucket_id": "b", "placement_group": "pg1",
                            "partition": "hpc"}},
    }))
    nm = load_nodemap(tmp_path)
    assert nm["hpc-1"].placement_group == "pg1" and nm.names() == ["hpc-1"] and "hpc-2" not in nm
    assert parse_nodemap(dump_nodemap(nm)).get("hpc-1") == nm["hpc-1"]


def test_nodemap_lookups():
    r = NodeRange("a-x-", 1, 10, "a", "X", "b", "p", 3, "a-x-pg")
    nm = NodeMap("c", [r, NodeRange("a-y-", 1, 2, "a", "Y", "b2", "p")])
    assert [nm[f"a-x-{i}"].placement_group for i in (1, 3, 4, 10)] == ["a-x-pg1", "a-x-pg1", "a-x-pg2", "a-x-pg4"]
    for bad in ("a-x-0", "a-x-11", "a-x-01", "a-x-", "a-z-1", "", "5", "a-x-1 "):
        assert nm.get(bad) is None and bad not in nm
    assert list(nm) == nm.names() and len(nm) == 12
    with pytest.raises(KeyError):
        nm["nope-1"]


def test_nodemap_100k_names_load_fast(tmp_path):
    status = make_status(
        array("big", bucket("Standard_HB120rs_v3", 120, 448, ib=True, max_count=50_000, pg=100),
              bucket("Standard_F2s_v2", 2, 4, max_count=50_000), max_count=10**6, max_core_count=10**8),
        max_core_count=10**8,
    )
    files = render(plan_partitions(status, make_cfg()))
    assert len(files["nodemap.json"]) < 10_000  # compact: one record per range
    write_outputs(files, tmp_path)
    nm = load_nodemap(tmp_path)
    assert len(nm) == 100_000
    assert nm["big-hb120rsv3-50000"].placement_group == "big-hb120rsv3-pg500"
    assert nm["big-f2sv2-1"].placement_group is None
    assert len(set(nm.names())) == 100_000
    # Loading cost does not grow with the number of names: compare with a 2-name map.
    small = tmp_path / "small"
    write_outputs(render(plan_partitions(make_status(array("s", bucket("Standard_X", max_count=2))), make_cfg())), small)
    assert (tmp_path / "nodemap.json").stat().st_size < 4 * (small / "nodemap.json").stat().st_size


# --------------------------------------------------------------------------- properties

machine_types = st.builds(
    lambda fam, n, suffix: f"Standard_{fam}{n}{suffix}",
    st.sampled_from(["F", "D", "E", "HB", "HC", "NC", "ND", "M"]),
    st.integers(1, 192),
    st.sampled_from(["", "s_v2", "as_v4", "rs_v3", "ads_A100_v4", "ms"]),
)
bucket_strategy = st.builds(
    lambda mt, vcpu, mem, gpu, ib, count, pg, valid, ht: bucket(
        mt, vcpu, mem, gpu=gpu, ib=ib, max_count=count, pg=pg, valid=valid, pcpu=(vcpu // 2 if ht and vcpu % 2 == 0 else vcpu)
    ),
    machine_types,
    st.integers(1, 256),
    st.floats(0.5, 4096, allow_nan=False).map(lambda x: round(x, 2)),
    st.sampled_from([0, 0, 1, 2, 4, 8]),
    st.booleans(),
    st.integers(0, 300),
    st.sampled_from([0, 1, 2, 4, 100, 300]),
    st.booleans(),
    st.booleans(),
)
array_names = st.text(alphabet=string.ascii_lowercase + string.digits, min_size=1, max_size=10).filter(lambda s: s[0].isalpha())
arrays_strategy = st.dictionaries(array_names, st.lists(bucket_strategy, min_size=0, max_size=6, unique_by=lambda b: b["definition"]["machineType"].lower()), min_size=1, max_size=5)


def _status_of(arrays: dict, scale: float = 1.0, max_count: int = 10**6) -> ClusterStatus:
    out = []
    for name, buckets in arrays.items():
        bs = [dict(b, maxCount=int(b["maxCount"] * scale)) for b in buckets]
        for b in bs:
            b["maxCoreCount"] = b["maxCount"] * b["virtualMachine"]["vcpuCount"]
        out.append(array(name, *bs, max_count=10**6, max_core_count=10**9))
    return make_status(*out, max_count=max_count, max_core_count=10**9)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrays_strategy)
def test_property_plan_invariants(arrays):
    status = _status_of(arrays)
    plan = plan_partitions(status, make_cfg())
    names = plan.names()
    assert len(names) == len(set(names)), "overlapping names"
    vms = {(na.name, b.machine_type): b for na in status.nodearrays for b in na.buckets}
    for g in plan.groups:
        b = vms[(g.nodearray, g.machine_type)]
        assert b.valid and g.count == b.max_count > 0
        assert 0 < g.real_memory < b.virtual_machine.memory * 1024
        assert g.gpus == b.virtual_machine.gpu_count
        assert g.cpus == g.sockets * g.cores_per_socket * g.threads_per_core == b.virtual_machine.vcpu_count
        assert expand_simple(g.nodes) == g.names()
        for n in g.names():
            assert re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?", n) and len(n) <= 63
        blocks = g.placement_blocks()
        assert sum(hi - lo + 1 for _, lo, hi in blocks) == g.count
        if g.placement_group_size:
            assert all(hi - lo + 1 <= g.placement_group_size for _, lo, hi in blocks)
            assert b.virtual_machine.infiniband and b.max_placement_group_size > 1
    gpu_groups = {g.nodes: g.gpus for g in plan.groups if g.gpus}
    assert {l.nodes: l.count for l in plan.gres} == gpu_groups
    # every skipped valid-looking bucket is accounted for in a comment
    emitted = {(g.nodearray, g.machine_type) for g in plan.groups}
    for (arr, mt), b in vms.items():
        if (arr, mt) not in emitted:
            assert any(arr in c for c in plan.comments)
    # switch names are unique; topology leaves cover every name exactly once
    leaves = [n for s in plan.switches if s.nodes and s.name not in ("root",) and not s.switches
              for n in expand_simple(s.nodes)]
    assert sorted(leaves) == sorted(names)
    assert len({s.name for s in plan.switches}) == len(plan.switches)
    nm = plan.nodemap()
    assert len(nm) == len(names)
    for n in names[:: max(1, len(names) // 50)]:
        e = nm.get(n)
        assert e is not None and vms[(e.nodearray, e.machine_type)].bucket_id == e.bucket_id


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrays_strategy, st.floats(0.0, 3.0), st.integers(1, 10**4))
def test_property_names_stable_when_counts_change(arrays, scale, cluster_max):
    """Changing maxCount (quota) anywhere only grows or shrinks each range at its end: a name
    that exists in both plans means the same nodearray, VM size and placement group."""
    before = plan_partitions(_status_of(arrays), make_cfg()).nodemap()
    after = plan_partitions(_status_of(arrays, scale, cluster_max), make_cfg()).nodemap()
    for name in set(before.names()) & set(after.names()):
        a, b = before[name], after[name]
        assert (a.nodearray, a.machine_type, a.bucket_id, a.placement_group) == (b.nodearray, b.machine_type, b.bucket_id, b.placement_group)
    by_group_before: dict = {}
    for r in before.ranges:
        by_group_before[r.prefix] = r
    for r in after.ranges:
        old = by_group_before.get(r.prefix)
        if old is not None:
            assert r.first == old.first == 1  # ranges only move at the end


def test_growing_max_count_only_appends():
    small = plan_partitions(default_status(), make_cfg())
    bigger = default_status()
    for na in bigger.nodearrays:
        for b in na.buckets:
            b.max_count += 5
            b.max_core_count += 5 * b.virtual_machine.vcpu_count
        na.max_count += 100
    bigger.max_count = 1000
    big = plan_partitions(bigger, make_cfg())
    s, b = small.names(), big.names()
    assert set(s) < set(b)
    for g_small, g_big in zip(small.groups, big.groups):
        assert g_big.names()[: g_small.count] == g_small.names()


@pytest.mark.parametrize("new, known, site, previous, added, removed", [
    (["a-1", "a-2"], ["a-1", "a-2", "static"], ["static"], ["a-1", "a-2"], [], []),  # same names: reconfigure is fine
    (["a-1"], ["a-1", "a-2", "static"], ["static"], ["a-1", "a-2"], [], ["a-2"]),  # max_nodes lowered
    (["a-1", "a-2", "a-3"], ["a-1", "a-2", "static"], ["static"], [], ["a-3"], []),  # grown
    (["a-1"], ["a-1", "a-2", "static"], ["static"], ["a-1"], [], ["a-2"]),  # map already rewritten: slurm.conf says
    (["a-1"], ["a-1", "static"], [], ["a-1"], [], ["static"]),  # a name nobody claims counts as ours
    ([], [], [], [], [], []),
])
def test_node_set_change(new, known, site, previous, added, removed):
    from hpc_bridge.partitions import node_set_change

    change = node_set_change(new, known, site, previous)
    assert (change.added, change.removed) == (added, removed)
    assert bool(change) == bool(added or removed)


def test_a_sites_own_gres_or_topology_conf_is_never_replaced(tmp_path):
    files = render(plan_partitions(default_status(), make_cfg()))
    (tmp_path / "gres.conf").write_text("NodeName=onprem-[1-2] Name=gpu File=/dev/nvidia[0-3]\n")
    with pytest.raises(ConfigError, match="gres.conf was not written by hpc-bridge partitions"):
        write_outputs(files, tmp_path)
    assert not (tmp_path / "partitions.conf").exists()  # nothing written
    (tmp_path / "gres.conf").unlink()
    assert "gres.conf" in write_outputs(files, tmp_path)
    files2 = dict(files, **{"topology.conf": files["topology.conf"] + "# changed\n"})
    assert write_outputs(files2, tmp_path) == ["topology.conf"]  # ours: replaced, the old kept as .bak
