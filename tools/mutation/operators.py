"""The mutants of one module: one small change each, found by walking its syntax tree.

Operators (each mutant applies exactly one):
- compare: `<` to `<=` and `>=`, `==` to `!=`, `is` to `is not`, `in` to `not in`, and so on (boundary and negation);
- boolean: `and` to `or` and back, `not x` to `x`, and a condition that is none of these (`if x:`, `while x:`,
  `a if x else b`, `assert x`, a comprehension's `if x`) to `not x`;
- arithmetic: `+`/`-` swapped, `*` to `//`, `/` and `//` to `*`, `%` to `//`, `**` to `*`, shifts and bit operators
  swapped, unary minus dropped (in expressions and augmented assignments);
- constant: an int or float n to n + 1, True and False swapped;
- raise: a `raise` statement removed;
- return: `return x` returns 0 in a function annotated int or float, `not x` in one annotated bool (or when x is
  a comparison or boolean), None otherwise;
- call: a statement that is only a call (or an awaited call) removed.

Left alone, because a change there says nothing about the money or trust logic: docstrings, annotations, f-strings
and other strings, and logging calls (`log.…(…)`).
"""

from __future__ import annotations

import ast
import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

_COMPARE: dict[type[ast.cmpop], tuple[type[ast.cmpop], ...]] = {
    ast.Lt: (ast.LtE, ast.GtE),
    ast.LtE: (ast.Lt, ast.Gt),
    ast.Gt: (ast.GtE, ast.LtE),
    ast.GtE: (ast.Gt, ast.Lt),
    ast.Eq: (ast.NotEq,),
    ast.NotEq: (ast.Eq,),
    ast.Is: (ast.IsNot,),
    ast.IsNot: (ast.Is,),
    ast.In: (ast.NotIn,),
    ast.NotIn: (ast.In,),
}
_ARITHMETIC: dict[type[ast.operator], type[ast.operator]] = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.FloorDiv,
    ast.Div: ast.Mult,
    ast.FloorDiv: ast.Mult,
    ast.Mod: ast.FloorDiv,
    ast.Pow: ast.Mult,
    ast.LShift: ast.RShift,
    ast.RShift: ast.LShift,
    ast.BitOr: ast.BitAnd,
    ast.BitAnd: ast.BitOr,
    ast.BitXor: ast.BitOr,
}
_LOGGERS = frozenset({"log", "logger", "_log", "LOG"})
_NUMERIC = frozenset({"int", "float"})
_SHOWN = 72  # characters of code shown for each side of a mutant
_ELIDED = 32  # an operand longer than this is shown shortened

# A step from a node to one of its children: (field, index in that field's list or None).
Path = tuple[tuple[str, int | None], ...]


@dataclass(frozen=True)
class Mutant:
    module: str  # dotted name
    index: int  # position in the module's mutant list
    kind: str  # compare | boolean | arithmetic | constant | raise | return | call
    qualname: str  # the enclosing class or function, "<module>" at top level
    line: int
    end_line: int
    before: str
    after: str
    key: str  # stable across edits elsewhere in the module: "qualname: before → after" (with " #n" if repeated)
    path: Path  # where the changed node is, from the module's root
    edit: int  # which of that node's mutations


def _shorten(code: str, limit: int = _SHOWN) -> str:
    code = " ".join(code.split())
    return code if len(code) <= limit else code[: limit // 2 - 1] + "…" + code[-(limit // 2 - 1):]


def _show(node: ast.AST) -> str:
    """`node` as code, its long operands elided in the middle, so that the operator changed stays in view."""
    node = copy.deepcopy(node)
    parents = [node]
    if isinstance(node, ast.Return | ast.Expr) and node.value is not None:
        parents = [node.value]
    elif isinstance(node, ast.Raise) and node.exc is not None:
        parents = [node.exc]
    for parent in parents:
        if isinstance(parent, ast.JoinedStr):  # its parts are not expressions that code can stand for
            continue
        for field, i, child in list(_children(parent)):
            if isinstance(child, ast.expr) and len(ast.unparse(child)) > _ELIDED:
                elided = _shorten(ast.unparse(child), _ELIDED)
                atom = isinstance(child, ast.Name | ast.Attribute | ast.Call | ast.Subscript | ast.Constant)
                _replace(parent, field, i, ast.Name(id=elided if atom else f"({elided})"))
    return _shorten(ast.unparse(node))


def _is_logging(call: ast.Call) -> bool:
    func = call.func
    return isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in _LOGGERS


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _boolean_valued(node: ast.expr) -> bool:
    negation = isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not)
    return negation or isinstance(node, ast.Compare | ast.BoolOp)


def _negated(node: ast.expr) -> ast.expr:
    return ast.UnaryOp(op=ast.Not(), operand=node)


class _Edit:
    """One change to a copy of the node at a path; `apply` returns the node that takes its place."""

    def __init__(self, kind: str, change: str, arg: object = None) -> None:
        self.kind, self.change, self.arg = kind, change, arg

    def apply(self, node: ast.AST) -> ast.AST:
        if self.change == "cmpop":
            i, op = self.arg  # type: ignore[misc]
            node.ops[i] = op()  # type: ignore[attr-defined]
        elif self.change == "op":
            node.op = self.arg()  # type: ignore[attr-defined,operator]
        elif self.change == "operand":
            return node.operand  # type: ignore[attr-defined,no-any-return]
        elif self.change == "value":
            node.value = self.arg  # type: ignore[attr-defined]
        elif self.change == "return":
            node.value = self.arg(node.value)  # type: ignore[attr-defined,operator]
        elif self.change == "pass":
            return ast.Pass()
        elif self.change == "negate":
            return _negated(node)  # type: ignore[arg-type]
        return node


def _edits(node: ast.AST, returns: str | None, condition: bool) -> Iterator[_Edit]:
    """The mutations of `node` itself (its children are visited separately); `condition`: it is what an if, a
    while, a conditional expression, an assert or a comprehension tests."""
    if condition and isinstance(node, ast.expr) and not (_boolean_valued(node) or isinstance(node, ast.Constant)):
        yield _Edit("boolean", "negate")
    if isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            for other in _COMPARE.get(type(op), ()):
                yield _Edit("compare", "cmpop", (i, other))
    elif isinstance(node, ast.BoolOp):
        yield _Edit("boolean", "op", ast.Or if isinstance(node.op, ast.And) else ast.And)
    elif isinstance(node, ast.UnaryOp):
        if isinstance(node.op, ast.Not):
            yield _Edit("boolean", "operand")
        elif isinstance(node.op, ast.USub):
            yield _Edit("arithmetic", "operand")
    elif isinstance(node, ast.BinOp | ast.AugAssign):
        other = _ARITHMETIC.get(type(node.op))
        string_format = (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod)
                         and isinstance(node.left, ast.Constant) and isinstance(node.left.value, str))
        if other is not None and not string_format:
            yield _Edit("arithmetic", "op", other)
    elif isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool):
            yield _Edit("constant", "value", not value)
        elif isinstance(value, int | float):
            yield _Edit("constant", "value", value + 1)
    elif isinstance(node, ast.Raise):
        yield _Edit("raise", "pass")
    elif isinstance(node, ast.Return) and node.value is not None:
        value = node.value
        if returns in _NUMERIC:
            if not isinstance(value, ast.Constant):
                yield _Edit("return", "return", lambda _v: ast.Constant(0))
        elif returns == "bool" or _boolean_valued(value):
            yield _Edit("return", "return", _negated)
        elif not (isinstance(value, ast.Constant) and value.value is None):
            yield _Edit("return", "return", lambda _v: ast.Constant(None))
    elif isinstance(node, ast.Expr):
        call = node.value.value if isinstance(node.value, ast.Await) else node.value
        if isinstance(call, ast.Call) and not _is_logging(call):
            yield _Edit("call", "pass")


def _children(node: ast.AST) -> Iterator[tuple[str, int | None, ast.AST]]:
    for field, value in ast.iter_fields(node):
        if field in ("annotation", "returns", "type_comment"):
            continue
        if isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, ast.AST):
                    yield field, i, item
        elif isinstance(value, ast.AST):
            yield field, None, value


Site = tuple[Path, ast.AST, str, str | None, bool]


def _sites(tree: ast.Module, include: Sequence[str] | None) -> Iterator[Site]:
    """(path, node, qualname, return annotation of the enclosing function, whether it is a condition) for each
    node that may be mutated, in a fixed order; only inside `include` (qualnames and what they contain) when
    given."""

    def in_scope(qualname: str) -> bool:
        return include is None or any(qualname == q or qualname.startswith(q + ".") for q in include)

    def walk(node: ast.AST, path: Path, qualname: str, returns: str | None) -> Iterator[Site]:
        if isinstance(node, ast.JoinedStr):
            return
        if isinstance(node, ast.Call) and _is_logging(node):
            return
        if isinstance(node, ast.If) and _is_type_checking(node):
            return
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            qualname = node.name if qualname == "<module>" else f"{qualname}.{node.name}"
            if not isinstance(node, ast.ClassDef):
                returns = ast.unparse(node.returns) if node.returns is not None else None
        if in_scope(qualname):
            yield path, node, qualname, returns, bool(path) and path[-1][0] in ("test", "ifs")
        for field, i, child in _children(node):
            yield from walk(child, (*path, (field, i)), qualname, returns)

    yield from walk(tree, (), "<module>", None)


def _locate(tree: ast.AST, path: Path) -> tuple[ast.AST, str, int | None, ast.AST]:
    """(parent, field, index, node) for the node at `path`."""
    parent: ast.AST = tree
    node: ast.AST = tree
    field, index = "", None
    for field, index in path:
        parent = node
        value = getattr(node, field)
        node = value[index] if index is not None else value
    return parent, field, index, node


def _replace(parent: ast.AST, field: str, index: int | None, new: ast.AST) -> None:
    if index is None:
        setattr(parent, field, new)
    else:
        getattr(parent, field)[index] = new


def find_mutants(source: str, module: str, include: Sequence[str] | None = None) -> list[Mutant]:
    """Every mutant of `source` (the text of `module`), in a fixed order; only inside the classes and functions
    named in `include` (qualified names) when given."""
    mutants: list[Mutant] = []
    seen: dict[str, int] = {}
    for path, node, qualname, returns, condition in _sites(ast.parse(source), include):
        for which, edit in enumerate(_edits(node, returns, condition)):
            changed = edit.apply(copy.deepcopy(node))
            before = _show(node)
            after = "(removed)" if isinstance(changed, ast.Pass) else _show(changed)
            key = f"{qualname}: {before} → {after}"
            seen[key] = seen.get(key, 0) + 1
            if seen[key] > 1:
                key = f"{key} #{seen[key]}"
            line = node.lineno  # type: ignore[attr-defined]
            mutants.append(Mutant(module=module, index=len(mutants), kind=edit.kind, qualname=qualname, line=line,
                                  end_line=node.end_lineno or line,  # type: ignore[attr-defined]
                                  before=before, after=after, key=key, path=path, edit=which))
    return mutants


def mutated_tree(source: str, mutant: Mutant) -> ast.Module:
    """The syntax tree of `source` with `mutant` applied, line numbers kept."""
    tree = ast.parse(source)
    _p, node, _q, returns, condition = next(site for site in _sites(tree, None) if site[0] == mutant.path)
    parent, field, index, _n = _locate(tree, mutant.path)
    new = list(_edits(node, returns, condition))[mutant.edit].apply(node)
    if new is not node:
        _replace(parent, field, index, ast.copy_location(new, node))
    return ast.fix_missing_locations(tree)
