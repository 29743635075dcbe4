"""CEL conditions over the facts: compile once, check the names they use, evaluate safely.

Conditions are Common Expression Language (``celpy``), never Python ``eval``: a policy file is
data that anyone may hand us, and CEL cannot reach the filesystem or loop forever.

Several things here go beyond what ``celpy`` does by itself:

- At compile time the parse tree is walked to find every fact a condition refers to (with
  macro variables such as ``w`` in ``watermarks.exists(w, w.detected)`` in scope), so a typo
  like ``synthetic_prob`` is an error when the policy loads rather than a rule that silently
  never fires; the same walk records the dotted paths (``meta.uploader``) that the trace shows.
- ``celpy`` has no type checker, so compile time also works out the type a condition gives
  where the facts cannot change it, from the declared type of each fact: ``1 + 2``,
  ``synthetic_probability`` (a double) or ``watermarks.filter(...)`` is never true or false,
  and a rule written that way would never fire. An operator given operands of types it has
  no overload for (``"a" * 3``, ``duration / 2``: celpy does not convert numbers) can never
  evaluate, and is refused too. What the schema leaves open (``meta.flag``) is left to run time.
- Run-time errors are told in CEL's words (``fact "meta.uploader" was not given``, ``'*' not
  supported between string and int``), never as celpy's Python classes and reprs; ``&&``,
  ``||`` and ``? :`` pass an error on as it is instead of wrapping it in another.
- ``celpy`` evaluates by recursion, so a condition nested deeper than it can evaluate is
  refused when it compiles, not when the first input reaches it; facts nested too deeply are
  refused before they are converted.
- Facts are converted to CEL values with the numeric types the fact schema promises, so
  ``duration > 5`` works whether the caller passed ``6`` or ``6.0``; a score outside 0..1 or a
  NaN or infinite number is refused, because NaN compares false with every threshold and
  would pass every rule unnoticed.
"""

from __future__ import annotations

import difflib
import functools
import math
import numbers
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import celpy
import lark
import re2
from celpy import celtypes
from celpy.evaluation import base_functions

# Every fact and the CEL type it has when given (a detector's figures may also be null).
FACT_TYPES: dict[str, str] = {
    "channels": "int",
    "duration": "double",
    "mark_verified": "bool",
    "meta": "map",
    "sample_rate": "int",
    "segments": "list",
    "speech_seconds": "double",
    "synthetic_probability": "double",
    "tags": "list",
    "watermarks": "list",
}
KNOWN_FACTS: tuple[str, ...] = tuple(FACT_TYPES)
# Facts that are probabilities; any other double fact need only be finite.
_PROBABILITY_FACTS = frozenset({"synthetic_probability"})
# How deeply mappings and lists may nest inside one fact; scan's --meta allows 32 levels.
MAX_FACT_DEPTH = 64
# How deep a condition's parse tree may be. celpy evaluates with several Python frames per
# node under a recursion limit of 2500; one level of brackets or of a call is about ten nodes,
# so this allows some 18 levels, above the 12 that CEL promises.
_MAX_TREE_DEPTH = 200
_TOO_DEEP = "condition is nested too deeply"

# Identifiers that CEL itself defines (type names, usable as in ``type(x) == int``).
_CEL_TYPE_NAMES = frozenset(
    {"bool", "bytes", "double", "int", "list", "map", "null_type", "string", "type", "uint"}
)
# Comprehension macros: ``target.macro(var, expr...)`` binds ``var`` inside ``expr``.
_MACROS = frozenset({"all", "exists", "exists_one", "filter", "map"})
# Fields the fact schema declares as floating point (top-level facts, and fields of the
# records inside list facts). An int there becomes a CEL double so comparisons type-check.
_DOUBLE_FACTS = frozenset(name for name, cel in FACT_TYPES.items() if cel == "double")
_DOUBLE_FIELDS = {
    "segments": frozenset({"start", "end", "synthetic_probability"}),
    "watermarks": frozenset({"p_value", "score"}),
}

# Functions and methods celpy implements, plus the function-like macros it expands.
_FUNCTIONS = frozenset(k for k in base_functions if k[0].isalpha()) | _MACROS | {"has", "dyn"}

# Result types for the static check: calls whose result type CEL fixes whatever the arguments
# (``dyn()`` and unlisted calls are left to run time), literal tokens, and arithmetic nodes.
_FUNCTION_TYPES = {
    **dict.fromkeys(("has", "bool", "contains", "startsWith", "endsWith", "matches"), "bool"),
    **{t: t for t in ("int", "uint", "double", "string", "bytes", "type", "timestamp", "duration")},
    **{name: "int" for name in base_functions if name.startswith("get")},
    "size": "int",
}
_METHOD_TYPES = {
    **_FUNCTION_TYPES,
    **dict.fromkeys(("all", "exists", "exists_one"), "bool"),
    "filter": "list",
    "map": "list",
}
_LITERAL_TYPES = {
    "INT_LIT": "int",
    "UINT_LIT": "uint",
    "FLOAT_LIT": "double",
    "STRING_LIT": "string",
    "MLSTRING_LIT": "string",
    "BYTES_LIT": "bytes",
    "BOOL_LIT": "bool",
    "NULL_LIT": "null",
}
_ARITHMETIC = {
    "addition_add": "+",
    "addition_sub": "-",
    "multiplication_mul": "*",
    "multiplication_div": "/",
    "multiplication_mod": "%",
}
# Grammar rules that only pass their single child through.
_PASS_THROUGH = frozenset(
    {"expr", "conditionalor", "conditionaland", "relation", "addition", "multiplication"}
    | {"unary", "member", "primary", "paren_expr"}
)

# The interpreted runner: celpy 0.5's CompiledRunner is faster but mishandles an error inside
# `&&` / `||` (CEL's rule that `false && error` is false). An interpreted evaluation shares
# nothing mutable, so one compiled Condition serves many threads.
_ENVIRONMENT = celpy.Environment()


class ConditionError(ValueError):
    """A condition that cannot be used: bad syntax, an unknown fact or function, or a result
    that is never true or false."""


class EvaluationError(Exception):
    """A condition that compiled but could not be evaluated against these facts."""


@dataclass(frozen=True)
class Condition:
    """A compiled CEL condition and the fact paths it refers to (for the trace)."""

    source: str
    reads: tuple[str, ...]
    _program: celpy.Runner = field(repr=False, compare=False)

    def evaluate(self, activation: Mapping[str, Any]) -> bool:
        """True or False, or :class:`EvaluationError` with a short reason."""
        try:
            value = self._program.evaluate(dict(activation))
        except celpy.CELEvalError as exc:
            raise EvaluationError(_eval_message(exc)) from None
        except (TypeError, ValueError, LookupError, AttributeError, ArithmeticError) as exc:
            # celpy lets a few host-language errors through (e.g. overflow in a conversion).
            raise EvaluationError(_readable(str(exc)) or type(exc).__name__) from None
        if isinstance(value, celpy.CELEvalError):
            raise EvaluationError(_eval_message(value))
        if not isinstance(value, celtypes.BoolType):
            raise EvaluationError(f"condition gave {_cel_type_name(value)}, not true or false")
        return bool(value)


def compile_condition(source: str, known_facts: Sequence[str] = KNOWN_FACTS) -> Condition:
    """Parse ``source``, check that every identifier it uses is a known fact and that it can
    give true or false."""
    try:
        tree = _ENVIRONMENT.compile(source)
    except celpy.CELParseError as exc:
        where = f" at column {exc.column + 1}" if exc.column is not None else ""
        raise ConditionError(f"bad CEL expression{where}: {source!r}") from None
    except RecursionError:
        raise ConditionError(_TOO_DEEP) from None
    if _deeper_than(tree, _MAX_TREE_DEPTH):
        raise ConditionError(_TOO_DEEP)
    paths: list[tuple[str, ...]] = []
    calls: list[str] = []
    _collect(tree, frozenset(), paths, calls)
    for name in calls:
        if name not in _FUNCTIONS:
            known = ", ".join(sorted(_FUNCTIONS))
            raise ConditionError(f"unknown function {name}() (CEL functions here: {known})")
    for path in paths:
        if path[0] not in known_facts and path[0] not in _CEL_TYPE_NAMES:
            raise ConditionError(unknown_fact_message(path[0], known_facts))
    for pattern in _literal_patterns(tree):
        problem = _pattern_problem(pattern)
        if problem is not None:
            raise ConditionError(
                f"matches() pattern {pattern!r} is not a valid regular expression: {problem}"
            )
    try:
        gives = _static_type(tree)
    except _NoOverload as exc:
        raise ConditionError(f"this condition can never be evaluated: {exc}") from None
    if gives not in (None, "bool"):
        raise ConditionError(f"condition must give true or false, but this one gives {gives}")
    reads = tuple(dict.fromkeys(".".join(p) for p in paths if p[0] in known_facts))
    program = _ENVIRONMENT.program(tree, functions=_LOGICAL_FUNCTIONS)
    return Condition(source=source, reads=reads, _program=program)


def unknown_fact_message(name: str, known_facts: Sequence[str] = KNOWN_FACTS) -> str:
    close = difflib.get_close_matches(name, known_facts, n=1)
    hint = f'did you mean "{close[0]}"? ' if close else ""
    return f'unknown fact "{name}" ({hint}known: {", ".join(known_facts)})'


def lookup(facts: Mapping[str, Any], path: str) -> tuple[bool, Any]:
    """Follow a dotted path through nested mappings: ``(found, value)``."""
    value: Any = facts
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return False, None
        value = value[part]
    return True, value


def check_fact(name: str, value: Any) -> None:
    """Raise ``ValueError`` naming the fact if ``value`` is one no rule can judge soundly."""
    if _deeper_than(value, MAX_FACT_DEPTH):
        raise ValueError(f'fact "{name}" is nested too deeply (at most {MAX_FACT_DEPTH} levels)')
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        return
    if name in _PROBABILITY_FACTS and not 0 <= value <= 1:
        raise ValueError(f'fact "{name}" must be a number from 0 to 1, got {value}')
    if name in _DOUBLE_FACTS and not math.isfinite(value):
        raise ValueError(f'fact "{name}" must be a finite number, got {value}')


def facts_to_cel(facts: Mapping[str, Any]) -> dict[str, Any]:
    """The CEL activation for ``facts``; raises ``TypeError`` naming a fact it cannot convert
    and ``ValueError`` naming one that :func:`check_fact` refuses."""
    activation = {}
    for name, value in facts.items():
        check_fact(name, value)
        if name in _DOUBLE_FACTS:
            value = _as_double(value)
        elif name in _DOUBLE_FIELDS and isinstance(value, Sequence) and not isinstance(value, str):
            fields = _DOUBLE_FIELDS[name]
            value = [_coerce_fields(item, fields) for item in value]
        try:
            activation[name] = to_cel(value)
        except TypeError as exc:
            raise TypeError(f'fact "{name}": {exc}') from None
    return activation


def to_cel(value: Any) -> Any:
    """A plain Python value (JSON-like) as the matching ``celpy.celtypes`` value."""
    if value is None:
        return None
    if isinstance(value, bool):
        return celtypes.BoolType(value)
    if isinstance(value, numbers.Integral):
        return celtypes.IntType(int(value))
    if isinstance(value, numbers.Real):
        return celtypes.DoubleType(float(value))
    if isinstance(value, str):
        return celtypes.StringType(value)
    if isinstance(value, bytes):
        return celtypes.BytesType(value)
    if isinstance(value, Mapping):
        return celtypes.MapType({celtypes.StringType(str(k)): to_cel(v) for k, v in value.items()})
    if isinstance(value, Sequence):
        return celtypes.ListType([to_cel(v) for v in value])
    raise TypeError(f"cannot use a {type(value).__name__} as a fact value")


def _as_double(value: Any) -> Any:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return float(value)
    return value


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether mappings, lists or parse-tree nodes nest more than ``limit`` levels in ``value``.

    Counted without recursing, since deep input is what it guards against; it stops at the
    first path past the limit, so a self-containing value ends too.
    """
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, lark.Tree):
            children: Any = item.children
        elif isinstance(item, Mapping):
            children = item.values()
        elif isinstance(item, Sequence) and not isinstance(item, str | bytes):
            children = item
        else:
            continue
        if level > limit:
            return True
        stack.extend((child, level + 1) for child in children)
    return False


def _coerce_fields(item: Any, fields: frozenset[str]) -> Any:
    if not isinstance(item, Mapping):
        return item
    return {k: _as_double(v) if k in fields else v for k, v in item.items()}


def _collect(
    node: Any, bound: frozenset[str], out: list[tuple[str, ...]], calls: list[str]
) -> None:
    """Append every free identifier's longest static dotted path (``meta.uploader``) to out,
    and every function or method name called to calls."""
    if not isinstance(node, lark.Tree):
        return
    kind = node.data
    if kind == "member_dot":
        path = _dotted(node)
        if path is None:
            _collect(node.children[0], bound, out, calls)
        elif path[0] not in bound:
            out.append(path)
        return
    if kind == "member_dot_arg":
        target, method, *args = node.children
        _collect(target, bound, out, calls)
        calls.append(str(method))
        exprs = args[0].children if args and isinstance(args[0], lark.Tree) else []
        variable = _dotted(exprs[0]) if str(method) in _MACROS and len(exprs) >= 2 else None
        if variable is not None and len(variable) == 1:
            for expr in exprs[1:]:
                _collect(expr, bound | {variable[0]}, out, calls)
        else:
            for expr in exprs:
                _collect(expr, bound, out, calls)
        return
    if kind in ("ident", "dot_ident"):
        name = str(node.children[0])
        if name not in bound:
            out.append((name,))
        return
    if kind in ("ident_arg", "dot_ident_arg"):
        calls.append(str(node.children[0]))
    if kind in ("ident_arg", "dot_ident_arg", "member_object"):
        # A function name or a message type name, not a fact: only the arguments are read.
        for child in node.children[1:]:
            _collect(child, bound, out, calls)
        return
    for child in node.children:
        _collect(child, bound, out, calls)


def _static_type(node: lark.Tree) -> str | None:
    """The CEL type ``node`` gives whatever the facts are, or None where the facts decide.

    Conservative: a fact's field (``meta.flag``), an index, ``dyn()`` or an unlisted call is
    None, so only a condition that can never be true or false is refused. A fact has its
    declared type; one that is null instead (no detector ran) is an error, never a bool
    either. Arithmetic never gives a bool in CEL, so it is named by its operator when its
    operands' types are not both known. An operator whose operands' types are known and that
    has no overload for any of them (``"a" * 3``, ``duration / 2``) raises :class:`_NoOverload`.
    """
    kind, children = node.data, node.children
    if kind in _PASS_THROUGH and len(children) == 1:
        return _static_type(children[0])
    if kind == "expr":  # condition ? then : else
        _static_type(children[0])
        then, otherwise = _static_type(children[1]), _static_type(children[2])
        if None in (then, otherwise) or "bool" in (then, otherwise):
            return None
        return then if then == otherwise else f"{then} or {otherwise}"
    if kind in ("conditionalor", "conditionaland"):
        for child in children:
            _static_type(child)
        return "bool"
    if kind == "relation":  # [operator node holding the left side, right]
        operator, right = children
        _operator_types(_RELATIONS[operator.data], [operator.children[0], right])
        return "bool"
    if kind in ("addition", "multiplication"):  # [operator node holding the left side, right]
        operator, right = children
        symbol = _ARITHMETIC[operator.data]
        results = _operator_types(symbol, [operator.children[0], right])
        if results is not None:
            return " or ".join(results)
        operands = {_static_type(operator.children[0]), _static_type(right)}
        return _arithmetic_type(symbol, operands)
    if kind == "unary":  # [unary_not | unary_neg, operand]
        if children[0].data == "unary_not":
            _operator_types("!", [children[1]])
            return "bool"
        results = _operator_types("-", [children[1]])
        if results is not None:
            return " or ".join(results)
        return _arithmetic_type("-", {_static_type(children[1])})
    if kind == "literal":
        return _LITERAL_TYPES.get(children[0].type)
    if kind in ("list_lit", "map_lit"):
        return kind.removesuffix("_lit")
    if kind == "ident":  # a fact: macro variables are never reached, as macros are not entered
        name = str(children[0])
        return "type" if name in _CEL_TYPE_NAMES else FACT_TYPES.get(name)
    if kind in ("ident_arg", "dot_ident_arg"):
        return _FUNCTION_TYPES.get(str(children[0]))
    if kind == "member_dot_arg":
        return _METHOD_TYPES.get(str(children[1]))
    return None


def _arithmetic_type(operator: str, operands: set[str | None]) -> str:
    """The type of an arithmetic result: the operands' one known type, else the operator."""
    known = operands - {None, "bool"}
    return known.pop() if len(operands) == 1 and known else f"the result of {operator}"


class _NoOverload(Exception):
    """An operator applied to operands of types it is never defined for."""


# A value of each scalar CEL type, to ask celpy whether an operator is defined for two types.
# celpy has no type checker and its overloads follow Python's rather than CEL's (``2.0 > 1``
# works, ``1 < 2.0`` and ``2.0 / 2`` do not), so the engine itself says what can evaluate.
_SAMPLES: dict[str, Any] = {
    "int": celtypes.IntType(2),
    "uint": celtypes.UintType(2),
    "double": celtypes.DoubleType(2.0),
    "string": celtypes.StringType("a"),
    "bytes": celtypes.BytesType(b"a"),
    "bool": celtypes.BoolType(True),
    "null": None,
}
_RELATIONS = {
    "relation_lt": "<",
    "relation_le": "<=",
    "relation_gt": ">",
    "relation_ge": ">=",
    "relation_eq": "==",
    "relation_ne": "!=",
    "relation_in": "in",
}
_NUMBERS = frozenset({"int", "uint", "double"})


def _operand_types(node: Any) -> tuple[str, ...] | None:
    """The scalar types ``node`` can have, the likeliest first, or None where unknown.

    A fact may also be null (a detector that did not run), so ``duration`` is double or null.
    """
    while isinstance(node, lark.Tree) and node.data in _PASS_THROUGH and len(node.children) == 1:
        node = node.children[0]
    if not isinstance(node, lark.Tree):
        return None
    if node.data == "ident" and str(node.children[0]) in FACT_TYPES:
        declared = FACT_TYPES[str(node.children[0])]
        return (declared, "null") if declared in _SAMPLES else None
    gives = _static_type(node)
    return (gives,) if gives in _SAMPLES else None


def _operator_types(operator: str, operands: list[Any]) -> tuple[str, ...] | None:
    """The types ``operator`` gives on these operands, None where an operand's type is unknown;
    raises :class:`_NoOverload` when it is defined for none of their possible types."""
    types = [_operand_types(operand) for operand in operands]
    if any(t is None for t in types):
        return None
    combinations: list[tuple[str, ...]] = [()]
    for options in types:
        combinations = [(*combo, option) for combo in combinations for option in options]
    results = [_operator_result(operator, combo) for combo in combinations]
    if all(result is None for result in results):
        raise _NoOverload(_not_supported(operator, combinations[0]))
    return tuple(dict.fromkeys(r for r in results if r is not None))


def _not_supported(operator: str, types: Sequence[str]) -> str:
    if operator == "?:":
        return f"the test before '?' must be true or false, not {types[0]}"
    if len(types) == 1:
        return f"'{operator}' not supported for {types[0]}"
    message = f"'{operator}' not supported between {types[0]} and {types[1]}"
    if len(set(types)) == 2 and set(types) <= _NUMBERS:
        message += " (CEL does not convert numbers: write 2.0 for a double, or use double())"
    return message


@functools.cache
def _operator_result(operator: str, types: tuple[str, ...]) -> str | None:
    """What celpy gives ``operator`` on values of these scalar types: a CEL type, or None."""
    text = f"{operator}a" if len(types) == 1 else f"a {operator} b"
    program = _ENVIRONMENT.program(_ENVIRONMENT.compile(text), functions=_LOGICAL_FUNCTIONS)
    try:
        value = program.evaluate({n: _SAMPLES[t] for n, t in zip("ab", types, strict=False)})
    except (celpy.CELEvalError, TypeError, ValueError, ArithmeticError):
        return None
    return None if isinstance(value, celpy.CELEvalError) else _cel_type_name(value)


def _literal_patterns(tree: Any) -> list[str]:
    """The patterns given to ``matches()`` as string literals, which can be checked before any
    facts arrive (a pattern computed from facts is checked when it is evaluated)."""
    patterns = []
    for node in tree.iter_subtrees():
        if node.data == "member_dot_arg" and str(node.children[1]) == "matches":
            exprs = node.children[2].children if len(node.children) > 2 else []
            argument = exprs[0] if exprs else None
        elif node.data == "ident_arg" and str(node.children[0]) == "matches":
            exprs = node.children[1].children if len(node.children) > 1 else []
            argument = exprs[1] if len(exprs) > 1 else None
        else:
            continue
        literal = argument
        while isinstance(literal, lark.Tree) and len(literal.children) == 1:
            if literal.data == "literal":
                break
            literal = literal.children[0]
        if isinstance(literal, lark.Tree) and literal.data == "literal":
            value = _ENVIRONMENT.program(argument).evaluate({})
            if isinstance(value, celtypes.StringType):
                patterns.append(str(value))
    return patterns


def _dotted(node: Any) -> tuple[str, ...] | None:
    """``a.b.c`` as ``("a", "b", "c")`` when the subtree is exactly that; otherwise None."""
    while isinstance(node, lark.Tree) and len(node.children) == 1 and node.data != "ident":
        node = node.children[0]
    if not isinstance(node, lark.Tree):
        return None
    if node.data == "ident":
        return (str(node.children[0]),)
    if node.data == "member_dot":
        base = _dotted(node.children[0])
        return None if base is None else (*base, str(node.children[1]))
    return None


_CEL_NAMES = {
    "NoneType": "null",
    "bool": "bool",
    "int": "int",
    "float": "double",
    "str": "string",
    "bytes": "bytes",
    "BoolType": "bool",
    "IntType": "int",
    "UintType": "uint",
    "DoubleType": "double",
    "StringType": "string",
    "BytesType": "bytes",
    "ListType": "list",
    "MapType": "map",
}


_CLASS_RE = re.compile(r"<class '(?:[\w.]+\.)?(\w+)'>|'(\w+Type)'")
_VALUE_RE = re.compile(r"\b(?:Int|Uint|Double|Bool|String)Type\((.*?)\)")


def _cel_type_name(value: Any) -> str:
    name = type(value).__name__
    return _CEL_NAMES.get(name, name)


def _eval_message(exc: celpy.CELEvalError) -> str:
    """A short reason from celpy's error, whose first argument can embed the whole activation."""
    message, cause, cause_args = (list(exc.args) + [None, None, None])[:3]
    text = str(message)
    missing = _UNDECLARED_RE.search(text)
    if cause is KeyError and missing:
        return f'fact "{missing.group(1)}" was not given'
    overload = _OVERLOAD_RE.match(text)
    if overload:
        name = overload.group(1) or overload.group(2)
        types = [_CEL_NAMES.get(t, t) for t in _CLASS_NAME_RE.findall(overload.group(3))]
        operator = _OPERATOR_NAMES.get(name, name)
        return _not_supported(operator, types)
    reason = _REASONS.get(text)
    if reason is not None:
        return reason
    if no_key := _NO_KEY_RE.match(text):
        path = _dotted(exc.tree) if exc.tree is not None else None
        if path is not None and path[0] in FACT_TYPES:
            return f'fact "{".".join(path)}" was not given'
        return f"no key {no_key.group(1)} in the map"
    if text == "no such overload" and exc.token is not None:
        types = _CLASS_NAME_RE.findall(str(cause_args))
        on = f" for {_CEL_NAMES.get(types[0], types[0])}" if types else ""
        return f"{exc.token}() not supported{on}"
    if cause is TypeError and cause_args:
        text = str(cause_args[0])
    return _readable(text.split(" (in activation")[0])


def _readable(text: str) -> str:
    """celpy names its Python classes ("<class 'celpy.celtypes.IntType'>", "'NoneType'",
    "IntType(3)"); a policy author thinks in CEL types and values."""
    text = _CLASS_RE.sub(lambda m: _CEL_NAMES.get(name := m.group(1) or m.group(2), name), text)
    return _VALUE_RE.sub(r"\1", text)


_UNDECLARED_RE = re.compile(r"undeclared reference to '(\w+)'")
# "found no matching overload for Token('RULE', 'relation_ge') applied to '(<class ...>, ...)'"
_OVERLOAD_RE = re.compile(
    r"found no matching overload for (?:Token\('RULE', '(\w+)'\)|(\S+)) applied to '(.*)'$"
)
_CLASS_NAME_RE = re.compile(r"(?:<class '(?:[\w.]+\.)?|')(\w*Type)'")
_OPERATOR_NAMES = {
    **_ARITHMETIC,
    **_RELATIONS,
    "unary_neg": "-",
    "unary_not": "!",
    "_&&_": "&&",
    "_||_": "||",
    "_?_:_": "?:",
}
_REASONS = {
    "modulus or divide by zero": "division by zero",
    "return error for overflow": "a number is out of range",
    "invalid_argument": "index out of range",
    "match error": "matches() was given a pattern that is not a valid regular expression",
}
_NO_KEY_RE = re.compile(r"^no such member in mapping: ('.*')$")


def _logical(operator: str, absorbing: bool) -> Any:
    """CEL's commutative ``&&`` (absorbing false) or ``||`` (absorbing true): an error on one
    side is ignored when the other side decides, and passed on as it is otherwise (celpy's own
    raises on two errors, which hides both behind a repr)."""

    def combine(x: Any, y: Any) -> Any:
        for value in (x, y):
            if isinstance(value, celtypes.BoolType) and bool(value) is absorbing:
                return value
        for value in (x, y):
            if isinstance(value, celpy.CELEvalError):
                return value
        for value in (x, y):
            if not isinstance(value, celtypes.BoolType):
                raise TypeError(f"'{operator}' needs true or false, not {_cel_type_name(value)}")
        return celtypes.BoolType(not absorbing)

    return combine


def _condition(test: Any, then: Any, otherwise: Any) -> Any:
    """``test ? then : otherwise``, passing on an error in ``test`` as it is."""
    if isinstance(test, celpy.CELEvalError):
        return test
    if not isinstance(test, celtypes.BoolType):
        raise TypeError(f"'?:' needs true or false, not {_cel_type_name(test)}")
    return then if test else otherwise


@functools.lru_cache(maxsize=256)
def _pattern(pattern: str) -> Any:
    """``pattern`` compiled by RE2 (CEL's regular expressions), which otherwise prints its own
    line on stderr for every bad pattern it is given, beside our sentence."""
    options = re2.Options()
    options.log_errors = False
    return re2.compile(pattern, options)


def _matches(text: Any, pattern: Any) -> Any:
    """CEL's ``matches()``, with patterns compiled once and quietly. Anything but strings
    makes RE2 raise ``TypeError``, which celpy reports as no overload, as it did before."""
    try:
        compiled = _pattern(pattern)
    except re2.error as exc:
        return celpy.CELEvalError("match error", type(exc), exc.args)
    return celtypes.BoolType(compiled.search(text) is not None)


def _pattern_problem(pattern: str) -> str | None:
    """Why RE2 refuses ``pattern``, or None if it compiles."""
    try:
        _pattern(pattern)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else ""
        return reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)
    return None


_LOGICAL_FUNCTIONS = {
    "_&&_": _logical("&&", absorbing=False),
    "_||_": _logical("||", absorbing=True),
    "_?_:_": _condition,
    "matches": _matches,
}
