"""hpc_bridge.hostlist against Slurm 22.05's own parser (scontrol as oracle).

The oracle is `scontrol show hostnames|hostlist|hostlistsorted` run with a minimal SLURM_CONF and
no controller. Without /usr/bin/scontrol the oracle tests skip, unless CI=true (then they fail).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
from hypothesis import example, HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hpc_bridge.errors import HostlistError
from hpc_bridge.hostlist import compress, compress_or_list, compress_sorted, expand

# ---------------------------------------------------------------------------------------------
# oracle
# ---------------------------------------------------------------------------------------------

SCONTROL = shutil.which("scontrol", path="/usr/bin:/usr/local/bin:" + os.environ.get("PATH", ""))


class Oracle:
    """Runs scontrol with a minimal slurm.conf; one process per question (~2-5 ms)."""

    def __init__(self, scontrol: str, conf: str):
        self.scontrol = scontrol
        self.env = dict(os.environ, SLURM_CONF=conf)

    def run(self, what: str, arg: str) -> subprocess.CompletedProcess:
        # "--": an argument starting with '-' must not be read as an scontrol option
        return subprocess.run([self.scontrol, "--", "show", what, arg], capture_output=True,
                              env=self.env, timeout=60)

    def raw(self, what: str, arg: str) -> str | None:
        """What `scontrol show <what> <arg>` prints, or None when Slurm says invalid."""
        proc = self.run(what, arg)
        if b"Invalid hostlist" in proc.stderr:
            return None
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.decode("utf-8", "surrogateescape")

    def show(self, what: str, arg: str) -> list[str] | None:
        """Names (one a line) printed by `scontrol show <what> <arg>`, or None when invalid.

        Slurm keeps a newline inside a name, so with one in the input a line is not a name:
        such questions go to raw() instead of being split wrongly here."""
        if "\n" in arg:
            raise ValueError(f"ambiguous oracle question (a name may hold the newline): {arg!r}")
        text = self.raw(what, arg)
        if text is None:
            return None
        lines = text.split("\n")
        assert lines[-1] == "", "scontrol output ends with a newline"
        return lines[:-1]

    def hostnames(self, expr: str) -> list[str] | None:
        return self.show("hostnames", expr)

    def hostlist(self, names: list[str]) -> str:
        out = self.show("hostlist", ",".join(names))
        assert out is not None and len(out) <= 1
        return out[0] if out else ""

    def hostlistsorted(self, names: list[str]) -> str:
        out = self.show("hostlistsorted", ",".join(names))
        assert out is not None and len(out) <= 1
        return out[0] if out else ""


@pytest.fixture(scope="session")
def oracle(tmp_path_factory) -> Oracle:
    if not SCONTROL or not os.access(SCONTROL, os.X_OK):
        message = "scontrol not installed: Slurm oracle tests need /usr/bin/scontrol"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + " (CI=true)")
        pytest.skip(message)
    conf = tmp_path_factory.mktemp("oracle") / "slurm.conf"
    conf.write_text("ClusterName=oracle\nSlurmctldHost=localhost\n")
    return Oracle(SCONTROL, str(conf))


# ---------------------------------------------------------------------------------------------
# table of tricky cases (each one checked against scontrol 22.05 by test_table_matches_slurm)
# ---------------------------------------------------------------------------------------------

EXPAND_TABLE = [
    ("", []),
    ("   ", []),
    ("n1", ["n1"]),
    ("a,,b", ["a", "b"]),
    (",a", ["a"]),
    ("a b\tc", ["a", "b", "c"]),  # not newline: see NEWLINE_IN_SLURM
    ("a, b", ["a", "b"]),
    ("n[1-3,05-7]", ["n1", "n2", "n3", "n05", "n06", "n07"]),
    ("a[1-03]", ["a1", "a2", "a3"]),  # padding follows the first number
    ("a[001-3]", ["a001", "a002", "a003"]),
    ("a[09-11]", ["a09", "a10", "a11"]),
    ("a[8-10]", ["a8", "a9", "a10"]),
    ("a[1-1]", ["a1"]),
    ("a[1-]", ["a1"]),  # an empty upper bound means the lower one
    ("a2,a1,a2", ["a2", "a1", "a2"]),  # order and duplicates kept
    ("a[1-2],a[1-2]", ["a1", "a2", "a1", "a2"]),
    ("[1-3]", ["1", "2", "3"]),
    ("x[1]", ["x1"]),
    ("n1-[1-2]", ["n1-1", "n1-2"]),  # prefix ending in a digit
    ("gpu01[1-2]", ["gpu011", "gpu012"]),
    ("a[1-2]b[3-4]", ["a1b3", "a1b4", "a2b3", "a2b4"]),
    ("n[1-3]-[4-5]", ["n1-4", "n1-5", "n2-4", "n2-5", "n3-4", "n3-5"]),
    ("a[1-2][3,4]", ["a13", "a14", "a23", "a24"]),
    # three groups: Slurm walks the prefix groups right to left, the first varies faster
    ("a[1-2]b[3-4]c[5]", ["a1b3c5", "a2b3c5", "a1b4c5", "a2b4c5"]),
    ("a[1,2]b[3,4],c[5,6]", ["a1b3", "a1b4", "a2b3", "a2b4", "c5", "c6"]),
    ("a[1,2] b", ["a1", "a2", "b"]),
    ("a[ 1-2]", ["a01", "a02"]),  # Slurm counts the blank in the padding width
    ("a[1, 2]", ["a1", "a02"]),
    ("a[+1-2]", ["a01", "a02"]),
    ("a[1- 2]", ["a1", "a2"]),
    ("a[0- -0]", ["a0"]),
    ("n[1a-3]", ["n01", "n02", "n03"]),  # Slurm only checks the end of the last number
    ("a;b,a$b", ["a;b", "a$b"]),  # no shell meaning: just characters
    ("a1-2]", ["a1-2]"]),
    ("]", ["]"]),
    ("a]b[1-2]", ["a]b1", "a]b2"]),
    ("a]b,c", ["a]b", "c"]),
    ("a[1]b[2,3]", ["a1b2", "a1b3"]),
    ("[1-2]x[3]", ["1x3", "2x3"]),
    ("a18446744073709551614", ["a18446744073709551614"]),
    ("a18446744073709551615", ["a18446744073709551615"]),  # 2**64-1 alone is fine
    ("a[18446744073709551615]", ["a18446744073709551615"]),
    ("a018446744073709551615", ["a018446744073709551615"]),
    ("a[18446744073709551615,18446744073709551614]", ["a18446744073709551615", "a18446744073709551614"]),
    ("a18446744073709551613,a18446744073709551614", ["a18446744073709551613", "a18446744073709551614"]),
    ("n\u0661,n\u0662", ["n\u0661", "n\u0662"]),  # Arabic-Indic digits: names without a number
]

# Slurm answers "Invalid hostlist" for all of these.
SLURM_REJECTS = [
    "a[1-2]b",  # text after the last bracket
    "a[1,2]x,y",
    "a[1,2]b[3,4]c",
    "a[1-3]]",
    "a[[1-3]]",
    "a[]",
    "[]",
    "a[3-1]",
    "a[1,,2]",
    "a[,1]",
    "a[1,]",
    "a[-1]",
    "a[x]",
    "a[1x]",
    "a[1-2x]",
    "a[1-2 ]",
    "a[1 2]",
    "a[1 ,2]",
    "a[1--2]",
    "a[1- -0]",
    "n[1a-]",
    "a[1-2]-[a]",
    "a[1-2]]b[3]",
    "a[1-2]b[c]d[3]",
    "a[0-65536]",  # more than 65,536 hosts in one range
    "a[1-65537]",
    "a[0-65535,1][1]",  # more than 65,536 prefixes from one group
    "a[1]b]",
    "n[\u0661-\u0663]",  # only ASCII digits are numbers
    "n[1-\u0663]",
    "n[\u0661]",
    "n[\uff11-\uff13]",  # fullwidth digits
]

# Slurm accepts these but answers with damaged data; we refuse rather than guess.
DELIBERATE_REJECTS = [
    ("a[1-2", "unclosed"),  # Slurm: host "a]"
    ("a[1,2", "unclosed"),  # Slurm: hosts "a]", "2"
    ("[", "unclosed"),  # Slurm: an empty host name
    ("a[b[1-2]", "unclosed"),  # Slurm: hosts "a[b1", "a[b2"
    ("x]a[1,2]", "unclosed"),  # Slurm: hosts "x]a]", "2]"
    ("a99999999999999999999", "too large"),  # Slurm clamps to 18446744073709551615
    ("a[0-99999999999999999999]", "too large"),  # Slurm wraps and prints nothing
    ("a[x]b[1-2]c[3]", "invalid range"),  # Slurm silently prints nothing
    ("a[0-65535,0]b[1]c[1]", "prefixes"),  # Slurm prints a partial list
    ("a\rb", "invalid character"),
    ("a\x0bb", "invalid character"),
    ("a\nb", "invalid character"),  # one name in Slurm, with a newline in it
    ("n\n1,n\n2", "invalid character"),
    ("a\n1,a2", "invalid character"),  # Slurm: a\n1, a\n2
    ("a[18446744073709551614-18446744073709551615]", "too large"),  # Slurm prints nothing
    ("b1,a[18446744073709551614-18446744073709551615],c1", "too large"),  # nothing at all
    ("a18446744073709551614,a18446744073709551615", "too large"),  # joined: nothing
    ("a[18446744073709551613-18446744073709551614],a18446744073709551615", "too large"),
    ("a[18446744073709551615]b[1-2]", "too large"),  # Slurm loops
    ("a[18446744073709551616]", "too large"),
]

COMPRESS_TABLE = [
    ([], ""),
    (["a1", "a2", "a3", "b01"], "a[1-3],b01"),
    (["a1", "a3", "a2"], "a[1,3,2]"),  # input order kept
    (["a2", "a1"], "a[2,1]"),
    (["a1", "b1", "a2"], "a1,b1,a2"),
    (["a1", "a1"], "a[1,1]"),
    (["a1", "a01"], "a[1,01]"),
    (["a9", "a10"], "a[9-10]"),  # compatible widths join
    (["a09", "a10"], "a[09-10]"),
    (["a9", "a010"], "a[9,010]"),  # incompatible padding does not
    (["a05", "a6"], "a[05,6]"),
    (["a0099", "a100"], "a[0099,100]"),
    (["a099", "a100"], "a[099-100]"),
    (["a0", "a00", "a000"], "a[0,00,000]"),
    (["a", "a1"], "a,a1"),
    (["a1", "a2", "a", "a3"], "a[1-2],a,a3"),
    (["n1-1", "n1-2"], "n1-[1-2]"),
    (["1", "2", "3"], "[1-3]"),
    (["01", "2"], "[01,2]"),
    (["a1", "a2", "b1", "b2", "a3"], "a[1-2],b[1-2],a3"),
    (["a1b2", "a1b10", "a2b1"], "a1b[2,10],a2b1"),
    (["n\u0661", "n\u0662"], "n\u0661,n\u0662"),
    (["a18446744073709551615"], "a18446744073709551615"),
    (["a18446744073709551615", "a18446744073709551614"], "a[18446744073709551615,18446744073709551614]"),
    (["a18446744073709551613", "a18446744073709551614"], "a[18446744073709551613-18446744073709551614]"),
]

COMPRESS_SORTED_TABLE = [
    (["a2", "a1", "a1"], "a[1-2]"),
    (["n10", "n9"], "n[9-10]"),
    (["b1", "a10", "a9", "a"], "a,a[9-10],b1"),
    (["a10", "a9", "a09", "a010"], "a[9,09-10,010]"),
    (["n1", "n2", "n10", "n010", "n0010", "n9", "n09", "n009"],
     "n[1-2,9,09-10,009-010,0010]"),
    (["a01b1", "a1b1", "a001b1", "a2b1", "a10b1", "a0b1"], "a0b1,a001b1,a01b1,a1b1,a2b1,a10b1"),
    (["b", "a", "B", "_", "a-1", "a.1"], "B,_,a,a-1,a.1,b"),
    (["x1", "x-1", "x_1", "x01", "x"], "x,x[1,01],x-1,x_1"),
    (["a1b2", "a1b10", "a2b1", "a10b1"], "a1b[2,10],a2b1,a10b1"),
    (["a2147483647", "a1", "a2147483648"], "a[1,2147483647-2147483648]"),  # within 2**31 of each other
]

# Numbers 2**31 or more apart: Slurm's sort overflows (misorders, drops names); ours sorts them.
BEYOND_SLURM_SORT = [
    (["a3000000000", "a2", "a1"], "a[1-2,3000000000]", "a[3000000000]"),
    (["a4294967296", "a1"], "a[1,4294967296]", "a[4294967296]"),
    (["a4294967297", "a2"], "a[2,4294967297]", "a[4294967297]"),
]

# Newline is not a separator in Slurm (a name may hold it), and the natural compare Slurm joins
# ranges with skips it: what Slurm prints for these (we refuse them: invalid character).
NEWLINE_IN_SLURM = [
    # expression, `show hostnames` output, `show hostlist` output
    ("a\nb", "a\nb\n", "a\nb\n"),  # one name, not two
    ("n\n1,n\n2", "n\n1\nn\n2\n", "n\n[1-2]\n"),
    ("a\n1,a2", "a\n1\na\n2\n", "a\n[1-2]\n"),  # a2 comes back as a\n2
]


@pytest.mark.parametrize("expr,expected", EXPAND_TABLE)
def test_expand_table(expr, expected):
    assert expand(expr) == expected


@pytest.mark.parametrize("expr", SLURM_REJECTS)
def test_expand_rejects_what_slurm_rejects(expr):
    with pytest.raises(HostlistError) as info:
        expand(expr)
    message = str(info.value)
    assert "\n" not in message
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("expr,why", DELIBERATE_REJECTS)
def test_expand_refuses_to_guess(expr, why):
    with pytest.raises(HostlistError, match=why):
        expand(expr)


def test_error_message_quotes_the_offending_part():
    with pytest.raises(HostlistError, match=r"'1-2x'.*'gpu\[1-2x\]'"):
        expand("cpu[1-4],gpu[1-2x]")
    with pytest.raises(HostlistError, match=r"'b'.*'a\[1-2\]b'"):
        expand("a[1-2]b")
    with pytest.raises(HostlistError, match=r"'0-70000'"):
        expand("n[0-70000]")
    with pytest.raises(HostlistError, match=r"\\n"):  # shown escaped, message stays one line
        compress(["a\nb"])


def test_range_cap_is_65536_hosts():
    assert len(expand("a[0-65535]")) == 65536
    assert len(expand("a[1-65536]")) == 65536
    assert len(expand("a[0-65535][1]")) == 65536


@pytest.mark.parametrize("names,expected", COMPRESS_TABLE)
def test_compress_table(names, expected):
    assert compress(names) == expected


@pytest.mark.parametrize("names,expected", COMPRESS_SORTED_TABLE)
def test_compress_sorted_table(names, expected):
    assert compress_sorted(names) == expected


@pytest.mark.parametrize("names", [["a[1]"], ["a,b"], ["a b"], [""], ["x]"], ["a\tb"], ["a\nb"],
                                   "n1,n2", [1, 2],
                                   ["a18446744073709551614", "a18446744073709551615"],
                                   ["a18446744073709551616"]])
def test_compress_rejects_non_host_names(names):
    with pytest.raises(HostlistError):
        compress(names)


def test_compress_sorted_refuses_max_after_sorting():
    with pytest.raises(HostlistError, match="too large"):
        compress_sorted(["a18446744073709551615", "a18446744073709551614"])


@pytest.mark.parametrize("names,ours,slurm", BEYOND_SLURM_SORT)
def test_compress_sorted_sorts_numbers_beyond_slurm_int(names, ours, slurm):
    assert compress_sorted(names) == ours
    assert sorted(expand(ours)) == sorted(names)


@pytest.mark.parametrize("expr,hostnames,hostlist", NEWLINE_IN_SLURM)
def test_newline_is_not_a_separator(expr, hostnames, hostlist):
    with pytest.raises(HostlistError, match=r"invalid character '\\n'"):
        expand(expr)


def test_oracle_refuses_to_split_names_at_newlines(oracle):
    with pytest.raises(ValueError, match="ambiguous"):
        oracle.hostnames("a\nb")


def test_compress_accepts_any_iterable():
    assert compress(f"n{i}" for i in range(1, 4)) == "n[1-3]"
    assert compress_sorted({"n3", "n1", "n2"}) == "n[1-3]"


def test_table_matches_slurm(oracle):
    for expr, expected in EXPAND_TABLE:
        assert oracle.hostnames(expr) == expected, expr
    for expr in SLURM_REJECTS:
        assert oracle.hostnames(expr) is None, expr
    for names, expected in COMPRESS_TABLE:
        assert oracle.hostlist(names) == expected, names
    for names, expected in COMPRESS_SORTED_TABLE:
        assert oracle.hostlistsorted(sorted(set(names))) == expected, names


def test_deliberate_rejections_are_damaged_answers_in_slurm(oracle):
    """Each input we refuse is one where Slurm's answer is not a faithful expansion."""
    damaged = {
        "a[1-2": ["a]"], "a[1,2": ["a]", "2"], "[": [""], "a[b[1-2]": ["a[b1", "a[b2"],
        "x]a[1,2]": ["x]a]", "2]"], "a99999999999999999999": ["a18446744073709551615"],
        "a[0-99999999999999999999]": [], "a[x]b[1-2]c[3]": [],
    }
    for expr, slurm_says in damaged.items():
        assert oracle.hostnames(expr) == slurm_says, expr
    partial = oracle.hostnames("a[0-65535,0]b[1]c[1]")
    assert partial is not None and len(partial) == 65536  # 65,537 asked for
    # a range ending at 2**64-1, also one Slurm joins from two names, is lost with its whole
    # list (22.05's scontrol even crashes on it)
    for expr in ("a[18446744073709551614-18446744073709551615]",
                 "b1,a[18446744073709551614-18446744073709551615],c1",
                 "a18446744073709551614,a18446744073709551615",
                 "a[18446744073709551613-18446744073709551614],a18446744073709551615"):
        assert oracle.run("hostnames", expr).stdout == b"", expr
    assert oracle.hostlist(["a18446744073709551614", "a18446744073709551615"]) == (
        "a[18446744073709551614-18446744073709551615]")  # which then expands to nothing
    for expr, hostnames, hostlist in NEWLINE_IN_SLURM:
        assert oracle.raw("hostnames", expr) == hostnames, expr
        assert oracle.raw("hostlist", expr) == hostlist, expr


@pytest.mark.parametrize("names,ours,slurm", BEYOND_SLURM_SORT)
def test_slurm_sort_breaks_beyond_int(oracle, names, ours, slurm):
    """Where compress_sorted and `scontrol show hostlistsorted` differ, Slurm's answer is the
    damaged one (names dropped), not a different valid order."""
    assert oracle.hostlistsorted(names) == slurm
    assert len(oracle.hostnames(slurm)) < len(names)
    assert compress_sorted(names) != slurm


# ---------------------------------------------------------------------------------------------
# property tests against scontrol
# ---------------------------------------------------------------------------------------------

ORACLE_SETTINGS = settings(max_examples=150, deadline=None,
                           suppress_health_check=[HealthCheck.too_slow])

prefix_chars = st.sampled_from("abn-_.0123456789")
prefixes = st.text(prefix_chars, max_size=4)


@st.composite
def numbers(draw, max_value=2000):
    """A number as a string, sometimes zero padded."""
    value = draw(st.integers(0, max_value))
    width = draw(st.integers(0, 4))
    return f"{value:0{width}d}"


@st.composite
def range_items(draw):
    lo = draw(numbers(300))
    kind = draw(st.sampled_from(["single", "range", "range", "open"]))
    if kind == "single":
        return lo
    if kind == "open":
        return lo + "-"
    hi = int(lo) + draw(st.integers(0, 12))
    hi_width = draw(st.integers(0, 4))
    return f"{lo}-{hi:0{hi_width}d}"


@st.composite
def bracket_groups(draw):
    return "[" + ",".join(draw(st.lists(range_items(), min_size=1, max_size=3))) + "]"


@st.composite
def hostlist_items(draw):
    first = draw(prefixes)
    groups = draw(st.integers(0, 3))
    text = first
    for _ in range(groups):
        text += draw(bracket_groups()) + draw(prefixes)
    if groups:
        # usually well-formed (nothing after the last bracket), sometimes not
        if draw(st.integers(0, 4)):
            text = text.rstrip("abn-_.0123456789")
            if not text.endswith("]"):
                text += draw(bracket_groups())
    return text or "x"


expressions = st.lists(hostlist_items(), min_size=0, max_size=4).flatmap(
    lambda items: st.tuples(st.just(items),
                            st.lists(st.sampled_from([",", " ", ",,", "\t"]),
                                     min_size=len(items), max_size=len(items)))
).map(lambda pair: "".join(item + sep for item, sep in zip(*pair)))


def _expand_or_none(expr):
    try:
        return expand(expr)
    except HostlistError:
        return None


@ORACLE_SETTINGS
@given(expr=expressions)
def test_expand_matches_slurm(oracle, expr):
    assert _expand_or_none(expr) == oracle.hostnames(expr)


@ORACLE_SETTINGS
@given(expr=st.text(st.sampled_from("ab01-,[] "), max_size=14))
def test_expand_fuzz_matches_slurm_or_refuses_damage(oracle, expr):
    ours = _expand_or_none(expr)
    slurm = oracle.hostnames(expr)
    if ours is not None or slurm is None:
        assert ours == slurm
    else:
        # we refused and Slurm answered: only for an unclosed '[' that Slurm papers over
        # (it tacks on a ']' or drops the '[': "a[1-2" -> "a]", "[0" -> "0")
        assert "[" in expr
        with pytest.raises(HostlistError, match="unclosed"):
            expand(expr)


@st.composite
def host_names(draw, max_value=3000):
    prefix = draw(st.text(st.sampled_from("abn-_.01"), max_size=3))
    if draw(st.integers(0, 9)) == 0:
        return prefix + draw(st.sampled_from("xyz"))  # no numeric suffix
    return prefix + draw(numbers(max_value))


@st.composite
def runs_of_names(draw):
    """Lists with long consecutive runs (so ranges form) mixed with odd names."""
    names = []
    for _ in range(draw(st.integers(0, 5))):
        start = draw(host_names())
        stem = start.rstrip("0123456789")
        digits = start[len(stem):]
        if digits:
            width = len(digits) if draw(st.booleans()) else 0
            first = int(digits)
            for i in range(draw(st.integers(1, 15))):
                names.append(f"{stem}{first + i:0{width}d}")
        else:
            names.append(start)
    return names


name_lists = st.one_of(st.lists(host_names(), max_size=12), runs_of_names())


@ORACLE_SETTINGS
@given(names=name_lists)
def test_compress_matches_slurm(oracle, names):
    names = [n for n in names if n]
    assert compress(names) == oracle.hostlist(names)


@ORACLE_SETTINGS
@given(names=name_lists)
def test_compress_sorted_matches_slurm(oracle, names):
    names = [n for n in names if n]
    unique = list(dict.fromkeys(names))
    # Slurm's range comparison is not transitive when one prefix mixes zero-padded numbers with
    # unpadded ones of another width ('9' < '00' < '10' but '9' < '10'): its order then depends on
    # glibc's qsort. Those lists are left out of the exact comparison (still sorted and unique).
    assume(not _mixed_padding(unique))
    assert compress_sorted(names) == oracle.hostlistsorted(unique)


def _mixed_padding(names):
    widths: dict[str, set[tuple[bool, int]]] = {}
    for name in names:
        m = re.search(r"(\d+)$", name)
        if m:
            digits = m.group(1)
            widths.setdefault(name[: m.start()], set()).add((digits.startswith("0") and len(digits) > 1, len(digits)))
    return any(any(padded for padded, _ in ws) and len({w for _, w in ws}) > 1 for ws in widths.values())


@settings(max_examples=300, deadline=None)
@given(names=name_lists)
def test_round_trip(names):
    names = list(dict.fromkeys(n for n in names if n))  # no duplicates
    assert expand(compress(names)) == names


@settings(max_examples=300, deadline=None)
@given(names=name_lists)
def test_sorted_round_trip_is_sorted_unique(names):
    names = [n for n in names if n]
    out = expand(compress_sorted(names))
    assert sorted(out) == sorted(set(names))
    assert compress_sorted(out) == compress(out)  # already in Slurm's sorted order


@settings(max_examples=200, deadline=None)
@given(expr=expressions)
@example(expr="200[0000]000[100]0000[100],")
def test_compress_of_expansion_expands_back(expr):
    names = _expand_or_none(expr)
    assume(names is not None)
    try:
        compressed = compress(names)
    except HostlistError as err:
        # by design: numbers of 2**64 and more are refused (Slurm silently damages them)
        assert "number too large" in str(err)
        return
    assert expand(compressed) == names


# ---------------------------------------------------------------------------------------------
# every Slurm release the real-Slurm tests run against
# ---------------------------------------------------------------------------------------------


def test_tables_expand_the_same_in_every_release(slurm_release, tmp_path):
    """What this module accepts in the tables, each release's scontrol expands and compresses the
    same way (24.11 also reads text after the last bracket and refuses an unclosed one, where
    22.05 refuses and damages: this module refuses both, see README's Slurm releases)."""
    conf = tmp_path / "oracle.conf"
    conf.write_text("ClusterName=oracle\nSlurmctldHost=localhost\n")

    def show(what: str, arg: str) -> list[str] | None:
        proc = subprocess.run(slurm_release.command(["/usr/bin/scontrol", "--", "show", what, arg], [tmp_path]),
                              capture_output=True, env={"SLURM_CONF": str(conf), "PATH": "/usr/bin:/bin"},
                              timeout=60, cwd="/")
        if b"Invalid hostlist" in proc.stderr:
            return None
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.decode("utf-8", "surrogateescape").split("\n")[:-1]

    for expr, expected in EXPAND_TABLE:
        assert show("hostnames", expr) == expected, expr
    for names, expected in COMPRESS_TABLE:
        assert show("hostlist", ",".join(names)) == [expected], names
    for names, expected in COMPRESS_SORTED_TABLE:
        assert show("hostlistsorted", ",".join(sorted(set(names)))) == [expected], names
    for expr in ("a[1-2]b", "a[1-2"):  # the releases disagree: refused here
        with pytest.raises(HostlistError):
            expand(expr)


@pytest.mark.parametrize("names, text", [
    (["n-2", "n-1", "n-3", "n-1"], "n-[1-3]"),
    (["htc-1-2]", "b", "b"], "b,htc-1-2]"),  # Slurm takes `htc-1-2]` as a name; no hostlist can hold it
    (["a,b", "c"], "a,b,c"),
    ([], ""),
])
def test_compress_or_list_never_fails_on_a_name(names, text):
    assert compress_or_list(names) == text
