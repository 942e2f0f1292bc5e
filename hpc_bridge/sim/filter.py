"""The node filter expression language of the simulator (a small subset of the real one).

Supported:
  - attribute names (node record keys, e.g. Name, Status, State, Template, MachineType, NodeId,
    PrivateIp, Hostname, PlacementGroupId, Fixed, CoreCount, ...); a missing attribute is null
  - literals: "double" or 'single' quoted strings (backslash escapes), integers/decimals,
    true, false, null
  - comparisons: ===  !==  ==  !=  <  <=  >  >=   (== and != behave like === and !==;
    ordering compares two numbers or two strings, anything else is false)
  - boolean: &&  ||  !  and parentheses; a bare operand is tested for truthiness
Precedence: ! binds tightest, then comparisons, then &&, then ||.
Anything else (functions, `in`, arithmetic, regex) is refused with a FilterError naming the
position, which the server answers with 409.
"""

from __future__ import annotations

import re
from typing import Any, Callable

Predicate = Callable[[dict[str, Any]], bool]


class FilterError(ValueError):
    pass


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<op>===|!==|==|!=|<=|>=|<|>|&&|\|\||!|\(|\))
      | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      | (?P<num>-?\d+(?:\.\d+)?)
      | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.VERBOSE,
)
_COMPARE = {"===", "!==", "==", "!=", "<", "<=", ">", ">="}


def _unescape(body: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), body)


def _tokenize(text: str) -> list[tuple[str, Any, int]]:
    tokens: list[tuple[str, Any, int]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            start = pos + (len(text[pos:]) - len(text[pos:].lstrip()))
            raise FilterError(f"unsupported filter syntax at position {start}: {text[start:start + 20]!r}")
        start = m.start(m.lastgroup)
        kind = m.lastgroup
        raw = m.group(kind)
        if kind == "str":
            tokens.append(("lit", _unescape(raw[1:-1]), start))
        elif kind == "num":
            tokens.append(("lit", float(raw) if "." in raw else int(raw), start))
        elif kind == "ident":
            if raw in ("true", "false", "null"):
                tokens.append(("lit", {"true": True, "false": False, "null": None}[raw], start))
            else:
                tokens.append(("ident", raw, start))
        else:
            tokens.append(("op", raw, start))
        pos = m.end()
    return tokens


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def _order(op: str, a: Any, b: Any) -> bool:
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
    if not numeric and not (isinstance(a, str) and isinstance(b, str)):
        return False
    return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0

    def peek(self) -> tuple[str, Any, int] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take_op(self, *ops: str) -> str | None:
        tok = self.peek()
        if tok and tok[0] == "op" and tok[1] in ops:
            self.i += 1
            return tok[1]
        return None

    def fail(self, what: str) -> FilterError:
        tok = self.peek()
        where = f"position {tok[2]}" if tok else "end of filter"
        return FilterError(f"unsupported filter: {what} at {where}")

    def parse(self) -> Predicate:
        if not self.tokens:
            raise FilterError("empty filter")
        pred = self.parse_or()
        if self.peek() is not None:
            raise self.fail("unexpected token")
        return pred

    def parse_or(self) -> Predicate:
        parts = [self.parse_and()]
        while self.take_op("||"):
            parts.append(self.parse_and())
        if len(parts) == 1:
            return parts[0]
        return lambda node: any(p(node) for p in parts)

    def parse_and(self) -> Predicate:
        parts = [self.parse_unary()]
        while self.take_op("&&"):
            parts.append(self.parse_unary())
        if len(parts) == 1:
            return parts[0]
        return lambda node: all(p(node) for p in parts)

    def parse_unary(self) -> Predicate:
        if self.take_op("!"):
            inner = self.parse_unary()
            return lambda node: not inner(node)
        if self.take_op("("):
            inner = self.parse_or()
            if not self.take_op(")"):
                raise self.fail("expected ')'")
            return inner
        left = self.parse_operand()
        tok = self.peek()
        if tok and tok[0] == "op" and tok[1] in _COMPARE:
            self.i += 1
            op = tok[1]
            right = self.parse_operand()
            if op in ("===", "=="):
                return lambda node: _equal(left(node), right(node))
            if op in ("!==", "!="):
                return lambda node: not _equal(left(node), right(node))
            return lambda node: _order(op, left(node), right(node))
        return lambda node: bool(left(node))

    def parse_operand(self) -> Callable[[dict[str, Any]], Any]:
        tok = self.peek()
        if tok is None:
            raise self.fail("expected an attribute or a literal")
        if tok[0] == "lit":
            self.i += 1
            value = tok[1]
            return lambda node: value
        if tok[0] == "ident":
            self.i += 1
            name = tok[1]
            return lambda node: node.get(name)
        raise self.fail(f"expected an attribute or a literal, got {tok[1]!r}")


def compile_filter(text: str) -> Predicate:
    """Compile a filter expression to a predicate over a node's wire dict; FilterError if unsupported."""
    if not isinstance(text, str):
        raise FilterError("filter must be a string")
    return _Parser(text).parse()
