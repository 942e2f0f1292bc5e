"""The partitions planner: the cluster's buckets and the config -> everything the Slurm files
need (node groups, NodeSets, partitions, gres, switches, the node map). Pure; rendering and
writing the files is hpc_bridge.partitions.

Node naming (stable and deterministic)
--------------------------------------
Every valid bucket (VM size) of a managed nodearray gets the names

    <array>-<sizetag>-<n>        n = 1 .. count, never zero-padded

* `<array>` is the nodearray name made hostname-safe: lowercased, '_' and '.' turned into '-'
  (`GPU_Array` -> `gpu-array`).
* `<sizetag>` is the machine type lowercased, without a leading `standard_`/`basic_`, keeping
  only letters and digits (`Standard_F4s_v2` -> `f4sv2`, `Standard_NC24ads_A100_v4` ->
  `nc24adsa100v4`).
* `count` is the bucket's maxCount bounded by the nodearray and cluster maxCount (and core
  limits), or `max_nodes` from the nodearray's config section; never below the highest index
  of an active node of that bucket that already has such a name.

The sizetag is used even when a nodearray has only one VM size, so adding a second size later
renames nothing. A name depends only on (nodearray, machine type, n): quota or count changes
only grow or shrink a range at its end, and a node keeps its name and VM size. The parts
cannot run into one another: the tag has no '-', the index is the last '-' field, so
different (array, tag, n) give different names.

Placement groups: for a bucket with placement groups (config `placement_groups = true`, or by
default InfiniBand with maxPlacementGroupSize > 1) the names are cut into consecutive blocks
of maxPlacementGroupSize: names 1..S are placement group `<array>-<sizetag>-pg1`, S+1..2S
`-pg2`, and so on. The group id goes into the node map (resume creates the node in it) and
into topology.conf as one leaf switch per block. Buckets without placement groups get one
leaf switch `<array>-<sizetag>-all` for the whole range (so topology/tree can still schedule
every node); leaves hang under one switch per nodearray (`<array>-switch`), all of those under
`root`. The shapes (`...-pg<k>`, `...-all`, `...-switch`, `root`) keep switch names distinct.

Every name that reaches the Slurm files (nodearray, partition, feature, machine type) is
checked against a conservative Slurm/hostname alphabet; anything else from the API (a newline,
'=', a space, ',', '#', a quote) is refused with a ConfigError naming the value. Skipped
buckets are written as comments that say why, with their text reduced to harmless characters.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Iterable

from hpc_bridge import hostlist
from hpc_bridge.api.models import Bucket, ClusterStatus, NodearrayStatus
from hpc_bridge.config import Config, NodearrayConfig, PartitionsConfig
from hpc_bridge.errors import ConfigError
from hpc_bridge.nodemap import NodeMap, NodeRange, range_expression

# Names Slurm takes in NodeName/PartitionName/NodeSet/Feature/SwitchName without quoting and
# that cannot smuggle a second key, a comment or a list separator into a line.
_SLURM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")
_HOST_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
_MAX_TIME = re.compile(r"(?:INFINITE|UNLIMITED|[0-9]+(?:-[0-9]+)?(?::[0-9]+){0,2})\Z")
MAX_HOSTNAME = 63
ROOT_SWITCH = "root"
SITE_SWITCH = "site"  # the site's own nodes; no '-', so no generated switch name can be it


# --------------------------------------------------------------------------- plan data


@dataclass(frozen=True)
class NodeGroup:
    """One NodeName line: the names of one bucket (VM size) of one nodearray."""

    nodearray: str
    partition: str
    bucket_id: str
    machine_type: str
    size_tag: str
    prefix: str  # "<array>-<sizetag>-"; names are prefix + 1..count
    count: int
    cpus: int
    sockets: int
    cores_per_socket: int
    threads_per_core: int
    real_memory: int  # MB
    vm_memory_mb: float  # the VM's memory, MB (RealMemory is below it)
    gpus: int
    infiniband: bool
    features: tuple[str, ...]
    weight: int
    placement_group_size: int  # 0: no placement groups
    notes: tuple[str, ...] = ()

    @property
    def nodes(self) -> str:
        """Hostlist expression of all names (`hpc-f4sv2-[1-10]`)."""
        return range_expression(self.prefix, 1, self.count)

    def names(self) -> list[str]:
        return [f"{self.prefix}{i}" for i in range(1, self.count + 1)]

    @property
    def placement_group_prefix(self) -> str:
        return f"{self.prefix}pg" if self.placement_group_size > 0 else ""

    def placement_blocks(self) -> list[tuple[str | None, int, int]]:
        """[(placement group id or None, first index, last index)] covering 1..count."""
        size = self.placement_group_size
        if size <= 0:
            return [(None, 1, self.count)]
        return [
            (f"{self.placement_group_prefix}{k // size + 1}", k + 1, min(k + size, self.count))
            for k in range(0, self.count, size)
        ]

    def node_range(self) -> NodeRange:
        return NodeRange(
            prefix=self.prefix,
            first=1,
            last=self.count,
            nodearray=self.nodearray,
            machine_type=self.machine_type,
            bucket_id=self.bucket_id,
            partition=self.partition,
            placement_group_size=self.placement_group_size,
            placement_group_prefix=self.placement_group_prefix,
        )


@dataclass(frozen=True)
class NodeSetLine:
    name: str  # "<array>-nodes"
    nodearray: str
    nodes: str  # hostlist expressions joined by ','


@dataclass(frozen=True)
class PowerSaving:
    """Slurm's power-saving times, set on each generated partition rather than globally: only
    the cloud nodes are ever suspended, never the site's own nodes (slurm.conf's global
    SuspendTime stays INFINITE)."""

    suspend_time: int
    suspend_timeout: int
    resume_timeout: int

    @classmethod
    def from_config(cls, cfg: Config) -> "PowerSaving":
        return cls(whole_seconds(cfg.suspend.suspend_time), whole_seconds(cfg.suspend.suspend_timeout),
                   whole_seconds(cfg.resume.resume_timeout))


def whole_seconds(value: float) -> int:
    """Slurm takes whole seconds: round up, so a timeout is never shorter than configured."""
    return math.ceil(value)


@dataclass(frozen=True)
class PartitionLine:
    name: str
    nodesets: tuple[str, ...]
    nodearrays: tuple[str, ...]
    default: bool
    max_time: str
    exclusive: bool
    def_mem_per_cpu: int | None
    power: PowerSaving


@dataclass(frozen=True)
class GresLine:
    nodes: str
    name: str
    count: int
    file: str


@dataclass(frozen=True)
class Switch:
    name: str
    nodes: str | None = None  # leaf switch
    switches: str | None = None  # inner switch: child switch names joined by ','


@dataclass(frozen=True)
class Skipped:
    """A bucket (or nodearray) left out of the config, with the reason; rendered as a comment."""

    nodearray: str
    machine_type: str
    bucket_id: str
    reason: str

    @property
    def comment(self) -> str:
        what = f"nodearray {self.nodearray}"
        if self.machine_type or self.bucket_id:
            what += f" bucket {self.machine_type or '?'}"
            if self.bucket_id:
                what += f" ({self.bucket_id})"
        return comment_text(f"skipped {what}: {self.reason}")


@dataclass
class PartitionPlan:
    cluster: str
    groups: list[NodeGroup] = field(default_factory=list)
    nodesets: list[NodeSetLine] = field(default_factory=list)
    partitions: list[PartitionLine] = field(default_factory=list)
    gres: list[GresLine] = field(default_factory=list)
    switches: list[Switch] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def comments(self) -> list[str]:
        return [s.comment for s in self.skipped]

    def nodemap(self) -> NodeMap:
        return NodeMap(self.cluster, [g.node_range() for g in self.groups])

    def names(self) -> list[str]:
        out: list[str] = []
        for g in self.groups:
            out.extend(g.names())
        return out

    def name_count(self) -> int:
        return sum(g.count for g in self.groups)


# --------------------------------------------------------------------------- validation


def comment_text(text: str) -> str:
    """Reduce free text (API reasons, hostile names) to one harmless comment line."""
    cleaned = "".join(c if (c.isprintable() and c.isascii()) else " " for c in str(text))
    return " ".join(cleaned.split()).rstrip("\\")[:300]


def check_slurm_name(what: str, value: object) -> str:
    """A name that goes into a Slurm file as is: letters, digits, '_', '.', '-' (max 63)."""
    if not isinstance(value, str) or not _SLURM_NAME.match(value):
        raise ConfigError(
            f"{what} {value!r} cannot be used in the Slurm config: only letters, digits, '_', '.', '-' "
            "are allowed (at most 63, starting with a letter or digit)"
        )
    return value


def host_prefix(nodearray: str) -> str:
    """The hostname-safe form of a nodearray name used in node names."""
    check_slurm_name("nodearray name", nodearray)
    prefix = re.sub(r"[_.]", "-", nodearray.lower()).strip("-")
    prefix = re.sub(r"-{2,}", "-", prefix)
    if not prefix or not _HOST_LABEL.match(prefix):
        raise ConfigError(f"nodearray name {nodearray!r} cannot be turned into a host name")
    return prefix


def size_tag(machine_type: str) -> str:
    """`Standard_F4s_v2` -> `f4sv2`: deterministic, letters and digits only."""
    t = machine_type.lower()
    for lead in ("standard_", "basic_"):
        if t.startswith(lead) and len(t) > len(lead):
            t = t[len(lead):]
            break
    tag = re.sub(r"[^a-z0-9]", "", t)
    if not tag:
        raise ConfigError(f"machine type {machine_type!r} gives no usable node name tag")
    return tag


def gpu_file(pattern: str, count: int) -> str:
    last = count - 1
    text = pattern.replace("{last}", str(last)).replace("{count}", str(count))
    if last == 0:
        text = text.replace("[0-0]", "0")
    if any(c in text for c in " \t\r\n=#,'\"") or not text.startswith("/"):
        raise ConfigError(f"[slurm] gpu_device_pattern {pattern!r} gives an unusable device path {text!r}")
    return text


# --------------------------------------------------------------------------- planning


def real_memory_mb(memory_gb: float, acfg: NodearrayConfig) -> int:
    """RealMemory: the lower of memory - reserve_gb and memory * (1 - fraction), in MB (GB = GiB)."""
    total = float(memory_gb) * 1024.0
    by_reserve = total - acfg.memory_reserve_gb * 1024.0
    by_fraction = total * (1.0 - acfg.memory_reserve_fraction)
    mem = min(by_reserve, by_fraction)
    if mem < 1:  # tiny VM: the fixed reserve would eat it all; keep the fractional reserve only
        mem = by_fraction
    return int(math.floor(mem))


def default_weight(vcpus: int, memory_gb: float, gpus: int) -> int:
    """Lower is preferred by Slurm: GPUs dominate, then cores, then memory."""
    return min(1 + gpus * 100_000 + vcpus * 100 + int(math.ceil(memory_gb)), 2**31 - 1)



def _core_limit(cores: int, vcpus: int) -> int | None:
    return cores // vcpus if cores > 0 and vcpus > 0 else None


def _node_count(status: ClusterStatus, na: NodearrayStatus, b: Bucket, acfg: NodearrayConfig) -> tuple[int, str]:
    """Names for a bucket, and why it is that number when it is zero."""
    vcpus = b.virtual_machine.vcpu_count
    if acfg.max_nodes is not None:
        return acfg.max_nodes, "max_nodes = 0 in the config"
    count = b.max_count
    why = f"maxCount {b.max_count}"
    for limit, label in (
        (na.max_count, f"nodearray maxCount {na.max_count}"),
        (status.max_count, f"cluster maxCount {status.max_count}"),
        (_core_limit(b.max_core_count, vcpus), f"maxCoreCount {b.max_core_count}"),
        (_core_limit(na.max_core_count, vcpus), f"nodearray maxCoreCount {na.max_core_count}"),
        (_core_limit(status.max_core_count, vcpus), f"cluster maxCoreCount {status.max_core_count}"),
    ):
        if limit is not None and limit < count:
            count, why = limit, label
    return max(count, 0), why


def _active_index(b: Bucket, prefix: str) -> int:
    """Highest n among the bucket's active nodes named `<prefix><n>` (0 when none)."""
    best = 0
    for name in b.active_nodes or ():
        if isinstance(name, str) and name.startswith(prefix):
            rest = name[len(prefix):]
            if rest.isdigit() and rest.isascii() and not rest.startswith("0"):
                best = max(best, int(rest))
    return best


def _uses_placement_groups(b: Bucket, acfg: NodearrayConfig) -> int:
    size = b.max_placement_group_size
    if acfg.placement_groups is False or size < 1:
        return 0
    if acfg.placement_groups is True:
        return size
    return size if (b.virtual_machine.infiniband and size > 1) else 0


def plan_partitions(status: ClusterStatus, cfg: Config, site_nodes: Iterable[str] = ()) -> PartitionPlan:
    """Pure: the cluster status and the config -> everything the Slurm files need.

    `site_nodes`: the node names of slurm.conf (the site's own nodes; generated names among
    them are ignored). topology/tree can only schedule nodes under a switch, so they get
    a leaf switch of their own under the root."""
    plan = PartitionPlan(cluster=cfg.cluster.name)
    arrays: list[_Array] = []
    prefixes: dict[str, str] = {}  # host prefix -> nodearray (two arrays must not share one)
    for na in sorted(status.nodearrays, key=lambda a: a.name):
        if not cfg.partitions.is_managed(na.name):
            plan.skipped.append(Skipped(comment_text(na.name), "", "", "not managed (config)"))
            continue
        array = _managed_array(na.name, cfg.partitions, prefixes)
        groups = _node_groups(status, na, array, plan.skipped)
        if not groups:
            plan.skipped.append(Skipped(array.name, "", "", "no usable buckets, so no partition"))
            continue
        array.groups = groups
        arrays.append(array)
        plan.groups.extend(groups)
    plan.nodesets.extend(NodeSetLine(a.nodeset, a.name, ",".join(g.nodes for g in a.groups)) for a in arrays)
    plan.partitions.extend(_partition_lines(arrays, PowerSaving.from_config(cfg)))
    plan.gres.extend(GresLine(g.nodes, "gpu", g.gpus, gpu_file(cfg.slurm.gpu_device_pattern, g.gpus))
                     for g in plan.groups if g.gpus > 0)
    site_nodes = list(site_nodes)
    site = site_leaf(site_nodes, set(plan.names())) if site_nodes else None
    plan.switches.extend(_switches(arrays, site))
    return plan


@dataclass
class _Array:
    """A managed nodearray, its names checked, and the node groups of its usable buckets."""

    name: str
    config: NodearrayConfig
    partition: str
    prefix: str  # host prefix of its node names
    groups: list[NodeGroup] = field(default_factory=list)

    @property
    def nodeset(self) -> str:
        return f"{self.prefix}-nodes"

    @property
    def settings(self) -> tuple:
        """What the nodearrays sharing a partition must agree on."""
        acfg = self.config
        exclusive = acfg.exclusive if acfg.exclusive is not None else any(g.infiniband for g in self.groups)
        return acfg.default, acfg.max_time, exclusive, acfg.def_mem_per_cpu


def _managed_array(name: str, pcfg: PartitionsConfig, prefixes: dict[str, str]) -> _Array:
    """A managed nodearray with its names checked; its host prefix is claimed in `prefixes`."""
    array = check_slurm_name("nodearray name", name)
    acfg = pcfg.for_array(array)
    partition = check_slurm_name(f"partition name (nodearray {array})", acfg.partition or array)
    if not _MAX_TIME.match(acfg.max_time):
        raise ConfigError(f"nodearray {array}: max_time {acfg.max_time!r} is not a Slurm time")
    prefix = host_prefix(array)
    if prefix in prefixes:
        raise ConfigError(
            f"nodearrays {prefixes[prefix]!r} and {array!r} both give node names starting {prefix!r}; "
            "rename one or leave it unmanaged"
        )
    prefixes[prefix] = array
    return _Array(array, acfg, partition, prefix)


def _node_groups(status: ClusterStatus, na: NodearrayStatus, array: _Array, skipped: list[Skipped]
                 ) -> list[NodeGroup]:
    """One node group per usable bucket of the nodearray; a bucket that is not usable is added
    to `skipped` with why. With a base weight in the config, the sizes get consecutive weights
    from it, in the order of their default weights."""
    groups: list[NodeGroup] = []
    tags: dict[str, str] = {}  # size tag -> machine type
    for b in sorted(na.buckets, key=lambda b: (b.machine_type, b.bucket_id)):
        group = _node_group(status, na, b, array, tags)
        if isinstance(group, str):
            skipped.append(Skipped(array.name, comment_text(b.machine_type), comment_text(b.bucket_id), group))
            continue
        tags[group.size_tag] = group.machine_type
        groups.append(group)
    weight = array.config.weight
    if weight is not None:
        order = sorted(range(len(groups)), key=lambda i: (groups[i].weight, groups[i].machine_type))
        rank = {i: r for r, i in enumerate(order)}
        groups = [_with_weight(g, weight + rank[i]) for i, g in enumerate(groups)]
    return groups


def _node_group(status: ClusterStatus, na: NodearrayStatus, b: Bucket, array: _Array, tags: dict[str, str]
                ) -> NodeGroup | str:
    """The node group of one bucket, or why the bucket is skipped. `tags`: the size tags (->
    machine type) of the nodearray's buckets used so far."""
    mt, vm, acfg = b.machine_type, b.virtual_machine, array.config
    if not b.valid:
        return f"invalid: {comment_text(b.invalid_reason) or 'no reason given'}"
    if not mt:
        return "no machine type"
    check_slurm_name(f"machine type (nodearray {array.name})", mt)
    tag = size_tag(mt)
    if tag in tags:
        return f"same node names as machine type {tags[tag]} (size tag {tag}) which is used"
    if vm.vcpu_count < 1:
        return f"vcpuCount {vm.vcpu_count}"
    if vm.memory <= 0:
        return f"memory {vm.memory} GB"
    real_memory = real_memory_mb(vm.memory, acfg)
    if real_memory < 1:
        return f"memory {vm.memory} GB is too small"
    group_prefix = f"{array.prefix}-{tag}-"
    count, why = _node_count(status, na, b, acfg)
    notes: list[str] = []
    active = _active_index(b, group_prefix)
    if active > count:
        notes.append(f"range kept up to {active} for active nodes ({why} allows {count})")
        count = active
    if count < 1:
        return f"no capacity: {why}"
    longest = f"{group_prefix}{count}"
    if len(longest) > MAX_HOSTNAME or len(f"{group_prefix}pg{count}") > MAX_HOSTNAME:
        raise ConfigError(
            f"node name {longest!r} (nodearray {array.name}, machine type {mt}) is longer than "
            f"{MAX_HOSTNAME} characters; use a shorter nodearray name"
        )
    tpc = _threads_per_core(b, acfg)
    features = [mt, array.name]
    if vm.infiniband:
        features.append("ib")
    if vm.gpu_count > 0:
        features.append("gpu")
    features.append("cloud")
    for f in features:
        check_slurm_name("feature", f)
    return NodeGroup(
        nodearray=array.name,
        partition=array.partition,
        bucket_id=str(b.bucket_id),
        machine_type=mt,
        size_tag=tag,
        prefix=group_prefix,
        count=count,
        cpus=vm.vcpu_count,
        sockets=1,
        cores_per_socket=vm.vcpu_count // tpc,
        threads_per_core=tpc,
        real_memory=real_memory,
        vm_memory_mb=float(vm.memory) * 1024.0,
        gpus=max(vm.gpu_count, 0),
        infiniband=bool(vm.infiniband),
        features=tuple(dict.fromkeys(features)),
        weight=default_weight(vm.vcpu_count, vm.memory, vm.gpu_count),
        placement_group_size=_uses_placement_groups(b, acfg),
        notes=tuple(comment_text(n) for n in notes),
    )


def _threads_per_core(b: Bucket, acfg: NodearrayConfig) -> int:
    vm = b.virtual_machine
    if acfg.threads_per_core and vm.pcpu_count and 0 < vm.pcpu_count < vm.vcpu_count:
        if vm.vcpu_count % vm.pcpu_count == 0:
            return vm.vcpu_count // vm.pcpu_count
    return 1


def _partition_lines(arrays: list[_Array], power: PowerSaving) -> list[PartitionLine]:
    """One partition per partition name; several nodearrays may share one when they agree.
    Default=YES only where the config asks: a site's own default partition stays its default."""
    by_partition: dict[str, list[_Array]] = {}
    for array in arrays:
        by_partition.setdefault(array.partition, []).append(array)
    lines: list[PartitionLine] = []
    for name, members in by_partition.items():
        settings = {a.settings for a in members}
        if len(settings) > 1:
            raise ConfigError(
                f"partition {name}: nodearrays {', '.join(a.name for a in members)} map to it with different "
                "settings (default, max_time, exclusive, def_mem_per_cpu); make them agree"
            )
        default, max_time, exclusive, def_mem = settings.pop()
        if def_mem is None:
            def_mem = min(max(g.real_memory // g.cpus, 1) for a in members for g in a.groups)
        lines.append(
            PartitionLine(
                name=name,
                nodesets=tuple(a.nodeset for a in members),
                nodearrays=tuple(a.name for a in members),
                default=default,
                max_time=max_time,
                exclusive=exclusive,
                def_mem_per_cpu=def_mem,
                power=power,
            )
        )
    return lines


def _switches(arrays: list[_Array], site: Switch | None) -> list[Switch]:
    """topology.conf: a leaf per placement block (or per bucket), one switch per nodearray, the
    site's own leaf (if any), and one root."""
    switches: list[Switch] = []
    array_switches: list[str] = []
    for array in arrays:
        leaves: list[str] = []
        for g in array.groups:
            for pg, lo, hi in g.placement_blocks():
                leaf = pg or f"{g.prefix}all"
                switches.append(Switch(leaf, nodes=range_expression(g.prefix, lo, hi)))
                leaves.append(leaf)
        sw = f"{array.prefix}-switch"
        switches.append(Switch(sw, switches=",".join(leaves)))
        array_switches.append(sw)
    if site is not None:
        switches.append(site)
        array_switches.append(site.name)
    if array_switches:
        switches.append(Switch(ROOT_SWITCH, switches=",".join(array_switches)))
    return switches


def site_leaf(site_nodes: Iterable[str], generated: set[str]) -> Switch | None:
    """The leaf switch of the site's own nodes (None: there are none)."""
    own = [n for n in dict.fromkeys(site_nodes) if n not in generated]
    for name in own:
        check_slurm_name("node name in slurm.conf", name)
    return Switch(SITE_SWITCH, nodes=hostlist.compress(own)) if own else None


def _with_weight(g: NodeGroup, weight: int) -> NodeGroup:
    return replace(g, weight=weight)
