"""`--where` filters: a small, closed expression language evaluated by bench, never by Python.

Why: filters get pasted into scripts and docs, and `DataFrame.eval` runs far more than a
filter (attribute access reached `os.system`). A filter is parsed with `ast` and may hold
only comparisons (`==`, `!=`, `<`, `<=`, `>`, `>=`, chained too), `and` / `or` / `not`,
membership (`in` / `not in` a list or tuple of constants), trial columns, dotted config
paths (`train.lr`, or quoted: `` `train.lr` ``) and constants (strings, numbers, True,
False, None; `x == None` holds where x is missing). Anything else (a call, an attribute of something that is not a config path,
arithmetic, subscripts, lambdas) is bad input naming the part it refused. The parsed tree is
then evaluated here on the DataFrame's columns.
"""

from __future__ import annotations

import ast
import operator
from typing import Any

import pandas as pd

from bench.errors import BenchInputError

MAX_LENGTH = 2000  # characters: a filter, not a program
EXAMPLE = "expected a true/false condition on each trial, e.g. \"dataset == 'cifar10' and seed < 3\" or \"train.lr in [0.1, 0.01]\""
ALLOWED = ("comparisons, and/or/not, in/not in [constants], column names or config paths (train.lr) "
           "and constants")

_COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
            ast.Gt: operator.gt, ast.GtE: operator.ge}
_KINDS = {ast.Call: "a call", ast.Attribute: "attribute access", ast.Subscript: "a subscript",
          ast.BinOp: "arithmetic", ast.Lambda: "a lambda", ast.IfExp: "an if-expression",
          ast.ListComp: "a comprehension", ast.GeneratorExp: "a comprehension", ast.DictComp: "a comprehension",
          ast.SetComp: "a comprehension", ast.Dict: "a dict", ast.Set: "a set", ast.Starred: "a starred value",
          ast.NamedExpr: "an assignment", ast.JoinedStr: "an f-string", ast.Await: "await"}


def _unquote(text: str) -> tuple[str, dict[str, str]]:
    """`text` with each `quoted name` replaced by a placeholder identifier (quotes inside strings kept)."""
    out, names, i, quote = [], {}, 0, None
    while i < len(text):
        ch = text[i]
        if quote:
            out.append(ch)
            if ch == "\\" and i + 1 < len(text):
                out.append(text[i + 1])
                i += 1
            elif ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
            out.append(ch)
        elif ch == "`":
            end = text.find("`", i + 1)
            if end < 0:
                raise BenchInputError(f"--where {_show(text)}: unmatched ` (quote a dotted name as `train.lr`)")
            key = f"_bench_quoted_{len(names)}"
            names[key] = text[i + 1 : end]
            out.append(f" {key} ")
            i = end
        else:
            out.append(ch)
        i += 1
    return "".join(out), names


def _show(text: str, limit: int = 120) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


class Filter:
    """A parsed `--where` condition: `names` are the columns and config paths it reads."""

    def __init__(self, text: str):
        self.text = text
        if len(text) > MAX_LENGTH:
            raise BenchInputError(f"--where: {len(text)} characters; a filter has at most {MAX_LENGTH}")
        source, self._quoted = _unquote(text)
        self.tree_source = source.strip()
        try:
            self.tree = ast.parse(self.tree_source, mode="eval")
        except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
            detail = getattr(exc, "msg", None) or type(exc).__name__
            raise BenchInputError(f"--where {_show(text)}: not a valid filter ({detail}); {EXAMPLE}") from None
        self.names: list[str] = []
        try:
            self._check(self.tree.body)
        except RecursionError:
            raise BenchInputError(f"--where {_show(text)}: nested too deeply") from None

    # ------------------------------------------------------------------ checking

    def _refuse(self, node: ast.AST, what: str) -> BenchInputError:
        part = ast.get_source_segment(self.tree_source, node) or ast.unparse(node)
        for key, name in self._quoted.items():
            part = part.replace(key, f"`{name}`")
        return BenchInputError(f"--where {_show(self.text)}: {what} ({_show(part, 60)}) is not allowed; "
                               f"a filter holds only {ALLOWED}")

    def _name(self, node: ast.AST) -> str | None:
        """The column or dotted config path a Name/Attribute chain spells, or None if it is not one."""
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            return None
        parts.append(self._quoted.get(node.id, node.id))
        name = ".".join(reversed(parts))
        if any(p.startswith("_") for p in name.split(".")[1:]) or (node.id not in self._quoted and name.startswith("_")):
            return None  # dunders and private attributes are never config fields
        return name

    def _check(self, node: ast.AST) -> None:
        if isinstance(node, ast.BoolOp):
            for value in node.values:
                self._check(value)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            self._check(node.operand)
        elif isinstance(node, ast.Compare):
            for op, right in zip(node.ops, node.comparators):
                if isinstance(op, (ast.In, ast.NotIn)):
                    if not isinstance(right, (ast.List, ast.Tuple)):
                        raise self._refuse(right, "membership in anything but a [list] of constants")
                    for item in right.elts:
                        self._constant(item)
                elif type(op) not in _COMPARE:
                    raise self._refuse(node, f"the operator {type(op).__name__}")
            for operand in [node.left, *[c for op, c in zip(node.ops, node.comparators)
                                         if not isinstance(op, (ast.In, ast.NotIn))]]:
                self._operand(operand)
        else:
            self._operand(node)

    def _operand(self, node: ast.AST) -> None:
        if isinstance(node, (ast.Name, ast.Attribute)):
            name = self._name(node)
            if name is None:
                raise self._refuse(node, "attribute access")
            if name not in self.names:
                self.names.append(name)
        elif isinstance(node, (ast.BoolOp, ast.Compare)) or (isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not)):
            self._check(node)
        else:
            self._constant(node)

    def _constant(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and (node.value is None or isinstance(node.value, (str, int, float, bool))):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)) \
                and isinstance(node.operand, ast.Constant) and isinstance(node.operand.value, (int, float)) \
                and not isinstance(node.operand.value, bool):
            return -node.operand.value if isinstance(node.op, ast.USub) else node.operand.value
        kind = next((k for t, k in _KINDS.items() if isinstance(node, t)), f"{type(node).__name__}")
        raise self._refuse(node, kind)

    # ------------------------------------------------------------------ evaluating

    def mask(self, df: pd.DataFrame) -> pd.Series:
        """True for the rows the condition holds on; BenchInputError if it is not a true/false condition."""
        try:
            result = self._eval(self.tree.body, df)
        except BenchInputError:
            raise
        except Exception as exc:  # comparing text with numbers, and the like
            raise BenchInputError(f"--where {_show(self.text)}: not a valid filter ({type(exc).__name__}: "
                                  f"{str(exc)[:200]}); {EXAMPLE}") from None
        if not isinstance(result, pd.Series) or len(result) != len(df) or not pd.api.types.is_bool_dtype(result):
            raise BenchInputError(f"--where {_show(self.text)}: {EXAMPLE}")
        return result.fillna(False).astype(bool)

    def _eval(self, node: ast.AST, df: pd.DataFrame) -> Any:
        if isinstance(node, ast.BoolOp):
            values = [self._as_bool(self._eval(v, df), v) for v in node.values]
            combine = operator.and_ if isinstance(node.op, ast.And) else operator.or_
            result = values[0]
            for value in values[1:]:
                result = combine(result, value)
            return result
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return ~self._as_bool(self._eval(node.operand, df), node.operand)
        if isinstance(node, ast.Compare):
            result, left = None, self._eval(node.left, df)
            for op, right_node in zip(node.ops, node.comparators):
                if isinstance(op, (ast.In, ast.NotIn)):
                    if not isinstance(left, pd.Series):
                        raise self._refuse(node, "membership of a constant")
                    values = [self._constant(e) for e in right_node.elts]
                    part = left.isin(values)
                    part = ~part if isinstance(op, ast.NotIn) else part
                    right = None
                else:
                    right = self._eval(right_node, df)
                    if isinstance(op, (ast.Eq, ast.NotEq)) and (right is None or left is None):
                        column = left if right is None else right  # `x == None`: x is missing
                        part = column.isna() if isinstance(column, pd.Series) else pd.Series(column is None, index=df.index)
                        part = ~part if isinstance(op, ast.NotEq) else part
                    else:
                        part = _COMPARE[type(op)](left, right)
                    if not isinstance(part, pd.Series):
                        part = pd.Series(bool(part), index=df.index)
                result = part if result is None else result & part
                left = right
            return result
        if isinstance(node, (ast.Name, ast.Attribute)):
            name = self._name(node)
            if name not in df.columns:
                raise BenchInputError(f"--where {_show(self.text)}: not a valid filter: no column or config path {name!r} "
                                      f"(columns: {', '.join(map(str, df.columns))[:300]})")
            return df[name]
        return self._constant(node)

    def _as_bool(self, value: Any, node: ast.AST) -> pd.Series:
        if isinstance(value, pd.Series) and pd.api.types.is_bool_dtype(value):
            return value.fillna(False).astype(bool)
        raise BenchInputError(f"--where {_show(self.text)}: {_show(ast.unparse(node), 60)} is not a true/false "
                              f"condition; {EXAMPLE}")


def parse_where(text: str) -> Filter:
    """A `--where` text parsed and checked (BenchInputError, exit 2, naming what it refused)."""
    return Filter(text)
