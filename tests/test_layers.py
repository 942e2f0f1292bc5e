"""The package's layers, read from its source: which module may import which, and who prints.

The arrows go one way: the CLI (hpc_bridge.cli) parses, dispatches and prints; everything else
returns data and never imports the CLI. The simulator stays apart from the product. Pure plan
modules reach neither the HTTP stack nor file locks, so they are table-tested in-process.
An import inside a function counts as much as one at the top: it is the same arrow, taken later.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "hpc_bridge"

# `python3 -m hpc_bridge`: the CLI's own entry point.
CLI_ENTRY = "hpc_bridge.__main__"
# The log file handler says on stderr that the log file broke mid-run: it runs deep inside
# any call, where there is no caller to hand the message to.
WRITES_STDERR = {"hpc_bridge.log"}
# The demo runs the product against the simulator; the CLI starts the simulator (`sim`).
IMPORTS_SIMULATOR = {"hpc_bridge.demo", "hpc_bridge.cli.admin"}
# Pure planners and the pure pieces they are built from (resume, suspend, repair, partitions
# and the follower gather their inputs and apply the plans).
PLAN_MODULES = {"hpc_bridge.resume_plan", "hpc_bridge.suspend_plan", "hpc_bridge.repair_plan",
                "hpc_bridge.partitions_plan", "hpc_bridge.follower_plan", "hpc_bridge.cloud", "hpc_bridge.reasons", "hpc_bridge.hostlist"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, ast.Module]:
    return {_module_name(p): ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.rglob("*.py"))}


def imports(tree: ast.Module) -> set[str]:
    """Every module an import statement names (and `from M import x` also as M.x, which may
    be a module), anywhere in the file."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def reaches(name: str) -> set[str]:
    """What importing `name` can import, through the package's own modules."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        for imported in imports(modules()[todo.pop()]):
            if imported not in seen:
                seen.add(imported)
                if imported in modules():
                    todo.append(imported)
    return seen


def outside_cli() -> list[str]:
    return [m for m in modules() if m != "hpc_bridge.cli" and not m.startswith("hpc_bridge.cli.")]


def _is_std_stream(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr in ("stdout", "stderr")
            and isinstance(node.value, ast.Name) and node.value.id == "sys")


def output_calls(tree: ast.Module) -> list[tuple[int, str]]:
    """print(...), and sys.stdout/sys.stderr .write/.writelines(...)."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        if isinstance(node.func, ast.Name) and node.func.id == "print":
            found.append((node.lineno, "print"))
        elif (isinstance(node.func, ast.Attribute) and node.func.attr in ("write", "writelines")
              and _is_std_stream(node.func.value)):
            found.append((node.lineno, f"sys.{node.func.value.attr}.{node.func.attr}"))
    return found


def test_the_package_is_read_whole():
    """The checks below see every module (a parse failure or a moved package would make them
    pass on nothing)."""
    names = set(modules())
    assert {"hpc_bridge.cli", "hpc_bridge.cli.parser", "hpc_bridge.resume", "hpc_bridge.api.client",
            "hpc_bridge.sim.server", "hpc_bridge.demo"} <= names
    assert "print" in {name for _, name in output_calls(modules()["hpc_bridge.cli.views"])}
    assert "hpc_bridge.cli" in imports(modules()[CLI_ENTRY])


def test_no_module_outside_the_cli_imports_it():
    offenders = {m: sorted(i for i in imports(modules()[m]) if i == "hpc_bridge.cli" or i.startswith("hpc_bridge.cli."))
                 for m in outside_cli() if m != CLI_ENTRY}
    assert {m: i for m, i in offenders.items() if i} == {}


def test_only_the_cli_prints():
    offenders = {m: output_calls(modules()[m]) for m in outside_cli()}
    offenders = {m: calls for m, calls in offenders.items()
                 if calls and not (m in WRITES_STDERR and {c for _, c in calls} == {"sys.stderr.write"})}
    assert offenders == {}


def test_product_code_does_not_import_the_simulator():
    offenders = sorted(m for m in modules() if not m.startswith("hpc_bridge.sim") and m not in IMPORTS_SIMULATOR
                       and any(i == "hpc_bridge.sim" or i.startswith("hpc_bridge.sim.") for i in imports(modules()[m])))
    assert offenders == []


def test_only_the_api_client_imports_httpx():
    assert sorted(m for m in modules() if any(i.split(".")[0] == "httpx" for i in imports(modules()[m]))) == \
        ["hpc_bridge.api.client"]


@pytest.mark.parametrize("module", sorted(PLAN_MODULES))
def test_plan_modules_reach_neither_http_nor_file_locks(module):
    assert module in modules()
    reached = reaches(module)
    assert not {i for i in reached if i.split(".")[0] in ("httpx", "filelock")}, sorted(reached)
    assert "hpc_bridge.api.client" not in reached and "hpc_bridge.flock" not in reached


# What makes a mutating API call or writes an operation record: the journal (recorded before
# it is sent, settled once), on top of the client that speaks HTTP.
JOURNAL_CALLS = {"create_nodes", "manage_nodes", "begin"}
JOURNAL = {"hpc_bridge.journal", "hpc_bridge.api.client"}


def attribute_calls(tree: ast.Module, names: set[str]) -> list[tuple[int, str]]:
    return [(node.lineno, node.func.attr) for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in names]


def test_only_the_journal_sends_mutating_calls_and_records_them():
    assert attribute_calls(modules()["hpc_bridge.journal"], JOURNAL_CALLS)  # the check sees them
    offenders = {m: calls for m in modules() if m not in JOURNAL and not m.startswith("hpc_bridge.sim")
                 if (calls := attribute_calls(modules()[m], JOURNAL_CALLS))}
    assert offenders == {}


def test_the_hooks_never_import_the_ports_at_run_time():
    """The Protocols are for type checking and tests: a module imports them under TYPE_CHECKING."""
    runtime = {m for m in modules() if m != "hpc_bridge.ports"
               and "hpc_bridge.ports" in imports(_without_type_checking(modules()[m]))}
    assert runtime == set()
    assert any("hpc_bridge.ports" in imports(modules()[m]) for m in modules() if m != "hpc_bridge.ports")


def _without_type_checking(tree: ast.Module) -> ast.Module:
    body = [n for n in tree.body if not (isinstance(n, ast.If) and isinstance(n.test, ast.Name)
                                          and n.test.id == "TYPE_CHECKING")]
    return ast.Module(body=body, type_ignores=[])


# The README's architecture table, bottom up. A module may import from its own layer and those
# below, never from one above. Planners read the edges' data types (API models, config, node
# map, state records), so plan, journal and edges share the ground floor; the tests above hold
# the planners to calling nothing there.
LAYERS = {
    "ground": {"errors", "log", "hostlist", "cloud", "reasons", "state_records", "resume_plan", "suspend_plan",
               "repair_plan", "partitions_plan", "follower_plan", "journal", "ports", "api", "api.client",
               "api.models", "slurm", "slurm_conf", "state", "flock", "lease", "files", "templating", "config",
               "nodemap", "resume_file"},
    "apply": {"resume", "suspend", "follower", "repair", "partitions", "nodeops"},
    "views": {"nodes_view", "operations_view", "status", "usage", "scale", "logs", "doctor", "install", "table"},
    "cli": {"cli", "cli.parser", "cli.hooks", "cli.views", "cli.admin", "cli.output", "context", "demo",
            "__main__"},
}
RANK = {f"hpc_bridge.{name}": rank for rank, names in enumerate(LAYERS.values()) for name in names}


def test_every_module_has_its_layer():
    product = {m for m in modules() if m != "hpc_bridge" and not m.startswith("hpc_bridge.sim")}
    assert product == set(RANK), (sorted(product - set(RANK)), sorted(set(RANK) - product))


def test_no_module_imports_from_a_layer_above_its_own():
    upward = sorted(f"{m} -> {imported}" for m, tree in modules().items() if m in RANK
                    for imported in imports(tree) if RANK.get(imported, -1) > RANK[m])
    assert upward == []
