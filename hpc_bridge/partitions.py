"""Partition generator: the cluster's buckets -> Slurm config (partitions, gres, topology, node map).

Three steps, only the last touches the disk:

    plan = plan_partitions(status, cfg)        # pure: ClusterStatus + Config -> PartitionPlan
    files = render(plan, template_dir)         # Jinja2 templates -> {filename: text}
    changed = write_outputs(files, out_dir)    # atomic replace, previous kept as <name>.bak

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

import difflib
import logging
import math
import os
import re
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable

from hpc_bridge import hostlist
from hpc_bridge.api.models import Bucket, ClusterStatus, NodearrayStatus
from hpc_bridge.config import Config, NodearrayConfig
from hpc_bridge.errors import ConfigError, SlurmError
from hpc_bridge.nodemap import NODEMAP_FILE, NodeMap, NodeRange, dump_nodemap, range_expression

log = logging.getLogger("hpc_bridge.partitions")

OUTPUT_FILES = ("partitions.conf", "gres.conf", "topology.conf", NODEMAP_FILE)
TEMPLATES = {"partitions.conf": "partitions.conf.j2", "gres.conf": "gres.conf.j2", "topology.conf": "topology.conf.j2"}

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
    pcfg = cfg.partitions
    plan = PartitionPlan(cluster=cfg.cluster.name)
    prefixes: dict[str, str] = {}  # host prefix -> nodearray (two arrays must not share one)
    array_groups: dict[str, list[NodeGroup]] = {}
    array_settings: dict[str, tuple] = {}
    partition_of: dict[str, str] = {}

    for na in sorted(status.nodearrays, key=lambda a: a.name):
        if not pcfg.is_managed(na.name):
            plan.skipped.append(Skipped(comment_text(na.name), "", "", "not managed (config)"))
            continue
        array = check_slurm_name("nodearray name", na.name)
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
        partition_of[array] = partition

        groups: list[NodeGroup] = []
        tags: dict[str, str] = {}  # size tag -> machine type
        buckets = sorted(na.buckets, key=lambda b: (b.machine_type, b.bucket_id))
        for b in buckets:
            mt = b.machine_type
            vm = b.virtual_machine

            def skip(reason: str) -> None:
                plan.skipped.append(Skipped(array, comment_text(mt), comment_text(b.bucket_id), reason))

            if not b.valid:
                skip(f"invalid: {comment_text(b.invalid_reason) or 'no reason given'}")
                continue
            if not mt:
                skip("no machine type")
                continue
            check_slurm_name(f"machine type (nodearray {array})", mt)
            tag = size_tag(mt)
            if tag in tags:
                skip(f"same node names as machine type {tags[tag]} (size tag {tag}) which is used")
                continue
            if vm.vcpu_count < 1:
                skip(f"vcpuCount {vm.vcpu_count}")
                continue
            if vm.memory <= 0:
                skip(f"memory {vm.memory} GB")
                continue
            real_memory = real_memory_mb(vm.memory, acfg)
            if real_memory < 1:
                skip(f"memory {vm.memory} GB is too small")
                continue
            group_prefix = f"{prefix}-{tag}-"
            count, why = _node_count(status, na, b, acfg)
            notes: list[str] = []
            active = _active_index(b, group_prefix)
            if active > count:
                notes.append(f"range kept up to {active} for active nodes ({why} allows {count})")
                count = active
            if count < 1:
                skip(f"no capacity: {why}")
                continue
            longest = f"{group_prefix}{count}"
            if len(longest) > MAX_HOSTNAME or len(f"{group_prefix}pg{count}") > MAX_HOSTNAME:
                raise ConfigError(
                    f"node name {longest!r} (nodearray {array}, machine type {mt}) is longer than "
                    f"{MAX_HOSTNAME} characters; use a shorter nodearray name"
                )
            tags[tag] = mt

            tpc = 1
            if acfg.threads_per_core and vm.pcpu_count and 0 < vm.pcpu_count < vm.vcpu_count:
                if vm.vcpu_count % vm.pcpu_count == 0:
                    tpc = vm.vcpu_count // vm.pcpu_count
            features = [mt, array]
            if vm.infiniband:
                features.append("ib")
            if vm.gpu_count > 0:
                features.append("gpu")
            features.append("cloud")
            for f in features:
                check_slurm_name("feature", f)
            groups.append(
                NodeGroup(
                    nodearray=array,
                    partition=partition,
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
            )

        if acfg.weight is not None:  # base weight for the array, sizes ordered by their default weight
            order = sorted(range(len(groups)), key=lambda i: (groups[i].weight, groups[i].machine_type))
            rank = {i: r for r, i in enumerate(order)}
            groups = [_with_weight(g, acfg.weight + rank[i]) for i, g in enumerate(groups)]
        if not groups:
            plan.skipped.append(Skipped(array, "", "", "no usable buckets, so no partition"))
            continue
        array_groups[array] = groups
        plan.groups.extend(groups)
        exclusive = acfg.exclusive if acfg.exclusive is not None else any(g.infiniband for g in groups)
        array_settings[array] = (acfg.default, acfg.max_time, exclusive, acfg.def_mem_per_cpu)

    # NodeSets, one per nodearray (its ranges listed explicitly).
    for array, groups in array_groups.items():
        plan.nodesets.append(NodeSetLine(f"{host_prefix(array)}-nodes", array, ",".join(g.nodes for g in groups)))

    # Partitions: one per partition name; several nodearrays may share one when they agree.
    by_partition: dict[str, list[str]] = {}
    for array in array_groups:
        by_partition.setdefault(partition_of[array], []).append(array)
    # Default=YES only where the config asks: a site's own default partition stays its default.
    power = PowerSaving.from_config(cfg)
    for name, arrays in by_partition.items():
        settings = {array_settings[a] for a in arrays}
        if len(settings) > 1:
            raise ConfigError(
                f"partition {name}: nodearrays {', '.join(arrays)} map to it with different settings "
                "(default, max_time, exclusive, def_mem_per_cpu); make them agree"
            )
        default, max_time, exclusive, def_mem = settings.pop()
        if def_mem is None:
            def_mem = min(max(g.real_memory // g.cpus, 1) for a in arrays for g in array_groups[a])
        plan.partitions.append(
            PartitionLine(
                name=name,
                nodesets=tuple(f"{host_prefix(a)}-nodes" for a in arrays),
                nodearrays=tuple(arrays),
                default=default,
                max_time=max_time,
                exclusive=exclusive,
                def_mem_per_cpu=def_mem,
                power=power,
            )
        )

    # gres.conf
    for g in plan.groups:
        if g.gpus > 0:
            plan.gres.append(GresLine(g.nodes, "gpu", g.gpus, gpu_file(cfg.slurm.gpu_device_pattern, g.gpus)))

    # topology.conf: leaf per placement block (or per bucket), one switch per array, one root.
    array_switches: list[str] = []
    for array, groups in array_groups.items():
        leaves: list[str] = []
        for g in groups:
            for pg, lo, hi in g.placement_blocks():
                leaf = pg or f"{g.prefix}all"
                plan.switches.append(Switch(leaf, nodes=range_expression(g.prefix, lo, hi)))
                leaves.append(leaf)
        sw = f"{host_prefix(array)}-switch"
        plan.switches.append(Switch(sw, switches=",".join(leaves)))
        array_switches.append(sw)
    site = site_leaf(site_nodes, set(plan.names()))
    if site is not None:
        plan.switches.append(site)
        array_switches.append(site.name)
    if array_switches:
        plan.switches.append(Switch(ROOT_SWITCH, switches=",".join(array_switches)))
    return plan


def site_leaf(site_nodes: Iterable[str], generated: set[str]) -> Switch | None:
    """The leaf switch of the site's own nodes (None: there are none)."""
    own = [n for n in dict.fromkeys(site_nodes) if n not in generated]
    for name in own:
        check_slurm_name("node name in slurm.conf", name)
    return Switch(SITE_SWITCH, nodes=hostlist.compress(own)) if own else None


def _with_weight(g: NodeGroup, weight: int) -> NodeGroup:
    return replace(g, weight=weight)


# --------------------------------------------------------------------------- rendering


def _template_env(template_dir: str | os.PathLike[str] | None):
    import jinja2

    if template_dir:
        if not Path(template_dir).is_dir():
            raise ConfigError(f"[slurm] template_dir {template_dir} is not a directory")
        loader: jinja2.BaseLoader = jinja2.FileSystemLoader(str(template_dir))
    else:
        loader = jinja2.FileSystemLoader(str(default_template_dir()))
    return jinja2.Environment(
        loader=loader,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )


def default_template_dir() -> Path:
    """The source tree's templates/ next to this package, else templates/ shipped as the package
    hpc_bridge.templates (an editable install may map that name to another checkout)."""
    tree = Path(__file__).resolve().parent.parent / "templates"
    if (tree / "partitions.conf.j2").is_file():
        return tree
    try:
        from importlib.resources import files

        path = Path(str(files("hpc_bridge.templates")))
        if (path / "partitions.conf.j2").is_file():
            return path
    except (ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parent.parent / "templates"


def render(plan: PartitionPlan, template_dir: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """{filename: text} for partitions.conf, gres.conf, topology.conf and nodemap.json."""
    import jinja2

    env = _template_env(template_dir)
    out: dict[str, str] = {}
    for filename, template in TEMPLATES.items():
        try:
            out[filename] = env.get_template(template).render(plan=plan)
        except jinja2.TemplateNotFound:
            raise ConfigError(f"template {template} not found in {template_dir or default_template_dir()}") from None
        except jinja2.TemplateError as err:
            raise ConfigError(f"template {template}: {type(err).__name__}: {err}") from None
        except OSError as err:
            raise ConfigError(f"template {template}: cannot read it: {err.strerror or err}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"template {template}: not valid UTF-8") from None
        except Exception as err:  # a fault in an admin's own template while it runs ({{ 1/0 }})
            raise ConfigError(f"template {template} failed: {type(err).__name__}: {err}") from None
    out[NODEMAP_FILE] = dump_nodemap(plan.nodemap())
    return out


# --------------------------------------------------------------------------- output


def read_current(out_dir: str | os.PathLike[str], names: Iterable[str]) -> dict[str, str | None]:
    current: dict[str, str | None] = {}
    for name in names:
        try:
            current[name] = (Path(out_dir) / name).read_text(encoding="utf-8")
        except FileNotFoundError:
            current[name] = None
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"{Path(out_dir) / name}: cannot read it ({type(err).__name__})") from None
    return current


def changed_files(files: dict[str, str], out_dir: str | os.PathLike[str]) -> list[str]:
    current = read_current(out_dir, files)
    return [name for name, text in files.items() if current[name] != text]


def diff_outputs(files: dict[str, str], out_dir: str | os.PathLike[str]) -> str:
    """Unified diff from the files on disk to the new ones ('' when nothing changes)."""
    current = read_current(out_dir, files)
    chunks = []
    for name, text in files.items():
        old = current[name]
        if old == text:
            continue
        path = str(Path(out_dir) / name)
        chunks.extend(
            difflib.unified_diff(
                (old or "").splitlines(keepends=True),
                text.splitlines(keepends=True),
                fromfile=path if old is not None else "/dev/null",
                tofile=path,
            )
        )
    return "".join(line if line.endswith("\n") else line + "\n" for line in chunks)


def write_outputs(files: dict[str, str], out_dir: str | os.PathLike[str]) -> list[str]:
    """Write the files that changed, as atomically as a set of files can be.

    Every new file is first written to a temporary file in out_dir and fsynced; only then are
    they renamed into place (the node map first, so a hook never sees a name Slurm knows and
    the map does not), each previous version kept as `<name>.bak`. Returns the changed names.
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"output directory {out}: {err.strerror}") from None
    changed = changed_files(files, out)
    order = sorted(changed, key=lambda n: (n != NODEMAP_FILE, n))
    temps: dict[str, str] = {}
    try:
        for name in order:
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=out)
            temps[name] = tmp
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(files[name])
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
        for name in order:
            target = out / name
            if target.exists():
                bak_tmp = out / f".{name}.bak.tmp"
                if bak_tmp.exists():
                    bak_tmp.unlink()
                os.link(target, bak_tmp)
                os.replace(bak_tmp, out / f"{name}.bak")
            os.replace(temps.pop(name), target)
        dfd = os.open(out, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as err:
        raise ConfigError(f"cannot write {out}: {err.strerror or err}") from None
    finally:
        for tmp in temps.values():
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return changed


# --------------------------------------------------------------------------- command


def conf_node_names(cfg: Config) -> list[str]:
    """Node names of the slurm.conf Slurm reads, without the generated partitions.conf (none
    when there is no slurm.conf yet)."""
    from hpc_bridge.doctor import slurm_conf_path
    from hpc_bridge.install import read_slurm_conf

    path = slurm_conf_path(cfg)
    if not os.path.isfile(path):
        return []
    conf = read_slurm_conf(path, skip=[os.path.join(cfg.slurm.conf_dir, "partitions.conf")])
    return expand_node_names(conf.node_names)


def previous_names(out_dir: str | os.PathLike[str]) -> set[str]:
    """The names of the node map an earlier run wrote into `out_dir` (none: first run)."""
    from hpc_bridge.nodemap import load_nodemap, nodemap_file

    path = nodemap_file(Path(out_dir) / NODEMAP_FILE)
    return set(load_nodemap(path).names()) if path.exists() else set()


def expand_node_names(exprs: Iterable[str]) -> list[str]:
    names: dict[str, None] = {}
    for expr in exprs:
        try:
            names.update(dict.fromkeys(hostlist.expand(expr)))
        except ValueError as err:
            raise ConfigError(f"slurm.conf NodeName={expr}: {err}") from None
    return list(names)


@dataclass
class NodeSetChange:
    """Node names a write adds to or removes from what slurmctld (or the last run) has."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed)

    def describe(self) -> str:
        parts = []
        if self.added:
            parts.append(f"{len(self.added)} added ({hostlist.compress(self.added)})")
        if self.removed:
            parts.append(f"{len(self.removed)} removed ({hostlist.compress(self.removed)})")
        return ", ".join(parts)


def node_set_change(new: Iterable[str], known: Iterable[str], site: Iterable[str] = (),
                    previous: Iterable[str] = ()) -> NodeSetChange:
    """Pure: the generated names `new` against the `known` ones (slurmctld's nodes, or the last
    node map). A known name is ours when the last node map had it or it is not one of the
    site's own (`site`: slurm.conf's names outside partitions.conf)."""
    new_set, known_set = set(new), set(known)
    ours = (known_set - set(site)) | (known_set & set(previous))
    return NodeSetChange(added=sorted(new_set - known_set), removed=sorted(ours - new_set))


@dataclass
class PartitionsResult:
    out_dir: str
    files: dict[str, str]
    changed: list[str]
    diff: str = ""
    reconfigured: bool = False
    restarted: bool = False
    plan: PartitionPlan | None = None
    node_set_change: NodeSetChange = field(default_factory=NodeSetChange)
    refused: bool = False  # --reconfigure with a node set change: nothing written, restart needed


def run_partitions(
    cfg: Config,
    status: ClusterStatus,
    *,
    out_dir: str | None = None,
    diff: bool = False,
    check: bool = False,
    reconfigure: bool = False,
    restart: bool = False,
    slurm=None,
) -> PartitionsResult:
    """The `hpc-bridge partitions` command after the status GET: plan, render, then diff/check/write.

    A change in the set of node names needs a slurmctld restart (22.05 exits on `scontrol
    reconfigure` then): with `reconfigure` nothing is written and the result says so
    (`refused`); with `restart` the files are written and `[slurm] restart_command` is run."""
    target = out_dir or cfg.slurm.conf_dir
    previous = previous_names(target)
    site = [n for n in conf_node_names(cfg) if n not in previous]  # an older generation's names are not the site's
    plan = plan_partitions(status, cfg, site)
    files = render(plan, cfg.slurm.template_dir)
    if diff or check:
        text = diff_outputs(files, target)
        return PartitionsResult(target, files, changed_files(files, target), diff=text, plan=plan)
    if reconfigure or restart:
        if slurm is None:
            from hpc_bridge.slurm import Slurm

            slurm = Slurm.from_config(cfg)
        change = node_set_change(plan.names(), slurm.show_nodes(), site, previous)
    else:
        change = node_set_change(plan.names(), previous)
    if change and reconfigure and not restart:
        log.warning("node names change (%s): slurmctld must be restarted, not reconfigured; nothing written",
                    change.describe())
        return PartitionsResult(target, files, changed_files(files, target), plan=plan, node_set_change=change,
                                refused=True)
    changed = write_outputs(files, target)
    log.info("wrote %s in %s; %d node names", ", ".join(changed) or "nothing new", target, len(plan.names()))
    result = PartitionsResult(target, files, changed, plan=plan, node_set_change=change)
    if restart:
        slurm.restart_controller(cfg.slurm.restart_command)
        log.info("slurmctld restarted (%s)", " ".join(cfg.slurm.restart_command))
        result.restarted = True
    elif reconfigure:
        try:
            slurm.reconfigure()
        except SlurmError as err:
            alive = slurm.ping()
            raise SlurmError(f"{err}; slurmctld is {'up' if alive else 'NOT answering: see its log'}") from None
        log.info("scontrol reconfigure done")
        result.reconfigured = True
    return result
