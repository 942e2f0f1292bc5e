"""Slurm hostlist expressions, with the behaviour of Slurm 22.05's own parser.

``expand("n[1-3,05-7]")`` gives what ``scontrol show hostnames`` prints, ``compress(names)``
gives what ``scontrol show hostlist`` prints for the same names in the same order, and
``compress_sorted(names)`` gives what ``scontrol show hostlistsorted`` prints for the unique names.

Slurm's rules mirrored here (all checked against the real scontrol, see tests/test_hostlist.py):

* Separators are ``,``, space and tab (not newline: Slurm keeps it in the name); a separator
  inside an open bracket does not end the token. Empty items are skipped, so ``""`` and
  ``"a,,b"`` are fine.
* Numbers are ASCII digits only (``n[١-٣]`` is invalid, ``n١`` is a name without a number).
* A bracket holds comma-separated numbers and ``lo-hi`` ranges. The zero padding of a range is
  the length of its first number (``[1-03]`` gives 1 2 3, ``[001-3]`` gives 001 002 003); ``1-``
  means ``1``; a range may hold at most 65,536 hosts.
* Several bracket groups in one name expand as a cartesian product. The last group varies
  fastest; with three or more groups Slurm walks them right to left, so in ``a[1-2]b[3-4]c[5]``
  the *first* group varies faster than the second (a1b3c5 a2b3c5 a1b4c5 a2b4c5). After the
  last ``]`` only a separator may follow (``a[1-2]b`` is invalid). Each group other than the
  last may yield at most 65,536 prefixes.
* Duplicates and order are kept by ``expand``.
* ``compress`` joins consecutive names with the same prefix whose numbers follow each other and
  whose zero padding is compatible (``a9,a10`` -> ``a[9-10]``, ``a9,a010`` -> ``a[9,010]``),
  and puts neighbouring runs with the same prefix into one bracket, in input order.

Where Slurm silently returns a damaged answer, this module raises :class:`HostlistError`
instead of guessing (never a partial answer):

* an unclosed ``[`` (Slurm turns ``n[1-4`` into the host ``n]``),
* numbers above 18446744073709551615 (2**64-1: Slurm clamps or wraps them), and 2**64-1 itself
  anywhere but alone: as the end of a range, right after 2**64-2 (Slurm joins the two into such
  a range) or in a bracket group before the last one (Slurm then prints nothing, or loops),
* an error inside an earlier bracket group of a product (Slurm drops those hosts silently),
* more than 65,536 items in one bracket (Slurm aborts),
* the characters newline, CR, VT, FF and NUL (Slurm's natural compare treats them as spaces, so
  ``a\n1,a2`` comes back as ``a\n1``, ``a\n2``),
* an expression that expands to more than MAX_TOTAL (1,000,000) names in all.
"""

from __future__ import annotations

import re
from functools import cmp_to_key
from typing import Iterable

from hpc_bridge.errors import HostlistError

__all__ = ["expand", "compress", "compress_sorted", "MAX_RANGE", "MAX_TOTAL"]

#: Most hosts one range (``lo-hi``) may hold, as in Slurm (MAX_RANGE = 64*1024).
MAX_RANGE = 64 * 1024
#: Most prefixes one non-final bracket group may produce (Slurm's MAX_PREFIX_CNT).
MAX_PREFIX_CNT = 64 * 1024
#: Most comma-separated items inside one bracket (Slurm's MAX_RANGES; Slurm aborts beyond).
MAX_RANGES = 64 * 1024
#: Most host names one expression may expand to in all (not a Slurm limit: ours, so that a
#: product such as ``a[0-65535]b[0-65535]``, about 4e9 names, fails at once instead of
#: exhausting memory). No Slurm cluster has a million nodes.
MAX_TOTAL = 1_000_000
#: Numbers must stay below unsigned long's maximum, where Slurm's arithmetic wraps.
_ULONG_MAX = 2**64 - 1

_DIGITS = "0123456789"
_SEP_RE = re.compile(r"[\t ,]")
_NONSEP_RE = re.compile(r"[^\t ,]")
_SPACE_SPLIT_RE = re.compile(r"[\t ,]+")
_FORBIDDEN_RE = re.compile(r"[\n\r\v\f\x00]")
# [0-9], not \d: Slurm's numbers are ASCII digits (\d also matches e.g. Arabic-Indic digits).
_LONG_NUMBER_RE = re.compile(r"[0-9]{20}")
_SIMPLE_RANGE_RE = re.compile(r"([0-9]+)(?:-([0-9]*))?")
# strtoul(3): optional C-locale white space, an optional sign, then decimal digits.
_STRTOUL_RE = re.compile(r"[ \t\n\v\f\r]*([+-]?)([0-9]+)")
# A name given to compress() must be one host: no separator, no bracket, no odd control char.
_BAD_NAME_RE = re.compile(r"[\t\n ,\[\]\r\v\f\x00]")


def _show(text: str, limit: int = 80) -> str:
    """Quote part of the input for an error message (repr: one line, escapes shown)."""
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return repr(text)


# ---------------------------------------------------------------------------------------------
# expand
# ---------------------------------------------------------------------------------------------


def expand(expr: str) -> list[str]:
    """Expand a Slurm hostlist expression into host names, in Slurm's order, duplicates kept.

    Raises HostlistError (a ValueError) for anything Slurm rejects, and for the inputs listed in
    the module docstring where Slurm would answer with damaged data.
    """
    if not isinstance(expr, str):
        raise HostlistError(f"hostlist must be a string, not {type(expr).__name__}")
    bad = _FORBIDDEN_RE.search(expr)
    if bad:
        raise HostlistError(
            f"invalid character {bad.group()!r} in hostlist {_show(expr)}"
        )
    if "[" not in expr and "]" not in expr:
        # Fast path: plain names only; tokens are the non-empty pieces between separators.
        if "," in expr and " " not in expr and "\t" not in expr:
            names = expr.split(",")
            if "" in names:
                names = [n for n in names if n]
        else:
            names = [n for n in _SPACE_SPLIT_RE.split(expr) if n]
        if _LONG_NUMBER_RE.search(expr):
            for name in names:
                _check_suffix(name)
            _check_no_joined_max(names)
        return names
    out: list[str] = []
    for tok in _tokens(expr):
        _expand_token(tok, out)
    if _LONG_NUMBER_RE.search(expr):
        _check_no_joined_max(out)
    return out


def _tokens(s: str):
    """Split like Slurm 22.05's _next_tok: a separator ends a token unless an open '[' before
    it has its first following ']' after it (then the token runs on past that ']')."""
    n = len(s)
    pos = 0
    while True:
        m = _NONSEP_RE.search(s, pos)
        if m is None:
            return
        tok = m.start()
        parse = tok
        m = _SEP_RE.search(s, tok)
        end = m.start() if m else n
        while True:
            ob = s.find("[", parse)
            if ob < 0 or ob > end:
                break
            cb = s.find("]", parse)
            if cb < 0 or cb < ob:
                break
            if cb < end:
                parse = cb + 1
                continue
            m = _SEP_RE.search(s, cb)
            end = m.start() if m else n
        yield s[tok:end]
        pos = end


def _check_suffix(name: str) -> None:
    """Reject a host whose numeric suffix Slurm cannot hold (> 2**64-1)."""
    stem = name.rstrip(_DIGITS)
    if len(name) - len(stem) >= 20 and int(name[len(stem):]) > _ULONG_MAX:
        raise HostlistError(f"number too large in host name {_show(name)}")


def _check_no_joined_max(names: list[str]) -> None:
    """Reject 2**64-1 right after 2**64-2 with the same prefix: Slurm joins such neighbours
    into one range, and a range ending at 2**64-1 is lost (its hostlist then prints nothing)."""
    previous = None
    for name in names:
        stem = name.rstrip(_DIGITS)
        suffix = name[len(stem):]
        if len(suffix) >= 20 and int(suffix) == _ULONG_MAX and previous is not None:
            p_stem, p_suffix = previous
            if p_stem == stem and int(p_suffix) == _ULONG_MAX - 1 and _widths_compatible(
                _ULONG_MAX - 1, len(p_suffix), _ULONG_MAX, len(suffix)
            ):
                raise HostlistError(
                    f"number too large in host name {_show(name)}: Slurm cannot hold"
                    f" {_ULONG_MAX} in a range (here after {_show(stem + p_suffix)})"
                )
        previous = (stem, suffix) if suffix else None


def _expand_token(tok: str, out: list[str]) -> None:
    p = tok.rfind("[")
    if p < 0:
        _check_suffix(tok)
        out.append(tok)
        return
    prefix = tok[:p]
    rest = tok[p + 1:]
    q = rest.find("]")
    if q < 0:
        raise HostlistError(f"unclosed '[' in hostlist item {_show(tok)}")
    if q + 1 < len(rest) and rest[q + 1] != ",":
        raise HostlistError(
            f"text {_show(rest[q + 1:])} after ']' in hostlist item {_show(tok)}"
            " (only another bracket group may follow)"
        )
    ranges = _parse_range_list(rest[:q], tok)
    _push_range_list(prefix, ranges, out, tok)


def _parse_range_list(text: str, tok: str) -> list[tuple[int, int, int]]:
    parts = text.split(",")
    if len(parts) > MAX_RANGES:
        raise HostlistError(
            f"more than {MAX_RANGES} items in one bracket in hostlist item {_show(tok)}"
        )
    ranges = []
    for part in parts:
        m = _SIMPLE_RANGE_RE.fullmatch(part)
        if m is not None:
            lo_s, hi_s = m.group(1), m.group(2)
            lo = int(lo_s)
            hi = int(hi_s) if hi_s else lo
            width = len(lo_s)
        else:
            lo, hi, width = _parse_range_slow(part, tok)
        if lo > hi:
            raise HostlistError(f"invalid range {_show(part)} in hostlist item {_show(tok)}")
        if hi > _ULONG_MAX or (hi == _ULONG_MAX and lo < hi):
            raise HostlistError(
                f"number too large in range {_show(part)} in hostlist item {_show(tok)}"
            )
        if hi - lo + 1 > MAX_RANGE:
            raise HostlistError(
                f"too many hosts in range {_show(part)} (at most {MAX_RANGE})"
                f" in hostlist item {_show(tok)}"
            )
        ranges.append((lo, hi, width))
    return ranges


def _strtoul(m: re.Match) -> int:
    value = int(m.group(2))
    if value > _ULONG_MAX:
        return _ULONG_MAX
    if m.group(1) == "-":
        return (-value) % (1 << 64)
    return value


def _parse_range_slow(part: str, tok: str) -> tuple[int, int, int]:
    """Slurm's _parse_single_range for the unusual spellings (signs, blanks, '1a-3')."""

    def bad() -> HostlistError:
        return HostlistError(f"invalid range {_show(part)} in hostlist item {_show(tok)}")

    if "x" in part:  # Slurm reserves 'x' for multi-dimensional boxes
        raise bad()
    dash = part.find("-")
    if dash >= 0:
        lo_s, hi_s = part[:dash], part[dash + 1:]
        if hi_s.startswith("-"):
            raise bad()
    else:
        lo_s, hi_s = part, ""
    width = len(lo_s)  # the padding width counts every character before the dash
    m = _STRTOUL_RE.match(lo_s)
    if m is None:
        raise bad()
    lo = _strtoul(m)
    if hi_s:
        # Slurm checks only the end of the *last* number parsed, so '1a-3' is accepted.
        m2 = _STRTOUL_RE.match(hi_s)
        if m2 is None or m2.end() != len(hi_s):
            raise bad()
        hi = _strtoul(m2)
    else:
        if m.end() != len(lo_s):
            raise bad()
        hi = lo
    return lo, hi, width


def _push_range_list(prefix: str, ranges, out: list[str], tok: str) -> None:
    """Slurm's _push_range_list: a prefix may hold earlier bracket groups (cartesian product).

    The group nearest the last one is taken first; when more groups remain before it, each of
    its values is substituted and the remaining prefix handled recursively, so with three or
    more groups the first group varies faster than the middle ones (Slurm's order).
    """
    p = prefix.rfind("[")
    if p < 0:
        _emit(prefix, ranges, out)
        return
    q = prefix.rfind("]", p)
    if q < 0:
        raise HostlistError(f"unclosed '[' in hostlist item {_show(tok)}")
    before, inner, after = prefix[:p], prefix[p + 1:q], prefix[q + 1:]
    recurse = "[" in before
    count = 0
    for lo, hi, width in _parse_range_list(inner, tok):
        if hi == _ULONG_MAX:  # Slurm's loop over such a group never ends
            raise HostlistError(
                f"number too large in bracket group [{_show(inner)[1:-1]}] before the last"
                f" in hostlist item {_show(tok)}"
            )
        count += hi - lo + 1
        if count > MAX_PREFIX_CNT:
            raise HostlistError(
                f"bracket group [{_show(inner)[1:-1]}] yields more than {MAX_PREFIX_CNT}"
                f" prefixes in hostlist item {_show(tok)}"
            )
        fmt = f"%0{width}d"
        for j in range(lo, hi + 1):
            new_prefix = before + fmt % j + after
            if recurse:
                _push_range_list(new_prefix, ranges, out, tok)
            else:
                _emit(new_prefix, ranges, out)


def _emit(prefix: str, ranges, out: list[str]) -> None:
    for lo, hi, width in ranges:
        if len(out) + hi - lo + 1 > MAX_TOTAL:
            raise HostlistError(f"hostlist expands to more than {MAX_TOTAL:,} names")
        if width <= len(str(lo)):  # no number in the range needs padding
            out.extend([prefix + s for s in map(str, range(lo, hi + 1))])
        else:
            out.extend(map((prefix.replace("%", "%%") + f"%0{width}d").__mod__,
                           range(lo, hi + 1)))


# ---------------------------------------------------------------------------------------------
# compress
# ---------------------------------------------------------------------------------------------


def _pad(num: int, width: int) -> int:
    digits = len(str(num))
    return width - digits if width > digits else 0


def _widths_compatible(n: int, wn: int, m: int, wm: int) -> bool:
    """Slurm's _width_equiv for (n, wn) and (m, wm): can the two share one zero-padding?"""
    if wn == wm:
        return True
    return not (_pad(n, wn) != _pad(n, wm) and _pad(m, wm) != _pad(m, wn))


def _names_list(names: Iterable[str]) -> list[str]:
    if isinstance(names, str):
        raise HostlistError("compress() takes a list of host names, not a string")
    names = list(names)
    if not names:
        return names
    try:
        joined = "".join(names)
    except TypeError:
        bad = next(n for n in names if not isinstance(n, str))
        raise HostlistError(f"host names must be strings, not {type(bad).__name__}") from None
    if "" in names:
        raise HostlistError("empty host name in list")
    bad = _BAD_NAME_RE.search(joined)
    if bad:
        culprit = next(n for n in names if _BAD_NAME_RE.search(n))
        raise HostlistError(
            f"invalid character {bad.group()!r} in host name {_show(culprit)}"
        )
    if _LONG_NUMBER_RE.search(joined):
        for name in names:
            _check_suffix(name)
        _check_no_joined_max(names)
    return names


def compress(names: Iterable[str]) -> str:
    """The ranged hostlist Slurm writes for these names, in their order (``scontrol show
    hostlist``): consecutive numbers join into ranges, neighbouring ranges with the same prefix
    share one bracket. ``expand(compress(x)) == x`` for names without duplicates.

    Names must be single host names (no separators or brackets); otherwise HostlistError.
    """
    return _compress(_names_list(names))


def _compress(names: list[str]) -> str:
    out: list[str] = []          # finished comma-separated items
    group: list[str] = []        # numeric parts of the finished ranges of the open group
    gprefix = None               # prefix of the open bracket group (None: no open group)
    cp = None                    # open range: prefix, lo, hi, width
    clo = chi = cw = 0
    digits = _DIGITS
    for name in names:
        stem = name.rstrip(digits)
        if len(stem) == len(name):
            # A name without a numeric suffix stands alone and ends any open group.
            if cp is not None:
                group.append(_numstr(clo, chi, cw))
                out.append(_group_str(gprefix, group))
                cp = gprefix = None
            out.append(name)
            continue
        suffix = name[len(stem):]
        num = int(suffix)
        width = len(suffix)
        if cp is not None and stem == cp:
            if num == chi + 1 and (width == cw or _widths_compatible(clo, cw, num, width)):
                chi = num
                continue
            group.append(_numstr(clo, chi, cw))
        else:
            if cp is not None:
                group.append(_numstr(clo, chi, cw))
                out.append(_group_str(gprefix, group))
            group = []
            gprefix = cp = stem
        clo = chi = num
        cw = width
    if cp is not None:
        group.append(_numstr(clo, chi, cw))
        out.append(_group_str(gprefix, group))
    return ",".join(out)


def _numstr(lo: int, hi: int, width: int) -> str:
    if hi > lo:
        return f"{lo:0{width}d}-{hi:0{width}d}"
    return f"{lo:0{width}d}"


def _group_str(prefix: str, group: list[str]) -> str:
    if len(group) == 1 and "-" not in group[0]:
        return prefix + group[0]
    return f"{prefix}[{','.join(group)}]"


# ---------------------------------------------------------------------------------------------
# compress_sorted
# ---------------------------------------------------------------------------------------------


def compress_or_list(names: Iterable[str]) -> str:
    """The names as a sorted hostlist (compress_sorted), or as a plain sorted list joined by ','
    when a name cannot be part of a hostlist: Slurm accepts names such as `a-1]`, and naming
    nodes in a log line or an scontrol call must not fail on one."""
    names = list(names)
    try:
        return compress_sorted(names)
    except HostlistError:
        return ",".join(sorted(set(names)))


def compress_sorted(names: Iterable[str]) -> str:
    """Like :func:`compress` after removing duplicates and sorting the names the way Slurm's
    hostlist_sort does (``scontrol show hostlistsorted`` of the unique names): prefixes in
    Slurm's natural order (strnatcmp), a name without a number before the numbered ones with
    the same prefix, then by the width of the number, then by its value. Meant for config
    generation: the same set of names always gives the same string.

    Numbers are ordered by value. Slurm's own sort subtracts them into a C int, which overflows
    once two numbers of one prefix lie 2**31 or more apart: there ``scontrol show
    hostlistsorted`` misorders and even drops names (``a3000000000,a2,a1`` -> ``a[3000000000]``)
    and this function gives the correctly sorted list instead, so it differs from Slurm's answer.
    """
    groups: dict[str, list[str]] = {}
    for name in dict.fromkeys(_names_list(names)):
        stem = name.rstrip(_DIGITS)
        group = groups.get(stem)
        if group is None:
            groups[stem] = group = []
        group.append(name)
    ordered: list[str] = []
    for stem in sorted(groups, key=cmp_to_key(_strnatcmp)):
        group = groups[stem]
        # Same prefix: the bare name (no number) first, then by width, then by value; for digit
        # strings of one width the string order is the numeric order. Both sorts are stable.
        group.sort()
        group.sort(key=len)
        ordered.extend(group)
    if any(len(name) - len(name.rstrip(_DIGITS)) >= 20 for name in ordered):
        _check_no_joined_max(ordered)
    return _compress(ordered)


def _nat_bytes(text: str) -> list[int]:
    # Slurm compares C chars, which are signed on x86: UTF-8 bytes >= 0x80 sort first.
    return [b - 256 if b >= 128 else b for b in text.encode("utf-8", "surrogatepass")]


_ZERO, _NINE = ord("0"), ord("9")


def _strnatcmp(a_text: str, b_text: str) -> int:
    """Slurm's strnatcmp (Martin Pool's natural order) for names without white space."""
    a = _nat_bytes(a_text)
    b = _nat_bytes(b_text)
    la, lb = len(a), len(b)
    ai = bi = 0
    while True:
        ca = a[ai] if ai < la else 0
        cb = b[bi] if bi < lb else 0
        if _ZERO <= ca <= _NINE and _ZERO <= cb <= _NINE:
            if ca == _ZERO or cb == _ZERO:
                result = _compare_left(a, ai, b, bi)
            else:
                result = _compare_right(a, ai, b, bi)
            if result:
                return result
        if ca == 0 and cb == 0:
            return 0
        if ca < cb:
            return -1
        if ca > cb:
            return 1
        ai += 1
        bi += 1


def _digit_at(seq: list[int], i: int) -> bool:
    return i < len(seq) and _ZERO <= seq[i] <= _NINE


def _compare_right(a, ai, b, bi) -> int:
    """Right-aligned digit runs: the longer run wins, else the first difference."""
    bias = 0
    while True:
        da, db = _digit_at(a, ai), _digit_at(b, bi)
        if not da and not db:
            return bias
        if not da:
            return -1
        if not db:
            return 1
        if a[ai] < b[bi]:
            bias = bias or -1
        elif a[ai] > b[bi]:
            bias = bias or 1
        ai += 1
        bi += 1


def _compare_left(a, ai, b, bi) -> int:
    """Left-aligned digit runs (one starts with 0): the first difference wins."""
    while True:
        da, db = _digit_at(a, ai), _digit_at(b, bi)
        if not da and not db:
            return 0
        if not da:
            return -1
        if not db:
            return 1
        if a[ai] < b[bi]:
            return -1
        if a[ai] > b[bi]:
            return 1
        ai += 1
        bi += 1
