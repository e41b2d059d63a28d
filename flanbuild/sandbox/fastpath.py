"""A fast rendering path for the simple templates and card expressions that make up most of a catalog.

Jinja renders a catalog template at ~100k rows/s per core and evaluates a card expression at a
similar rate, mostly in per-call overhead (a new ``Context`` per render or expression call, name
resolution, generator plumbing). Most catalog templates are literal text with ``{{name}}``
placeholders, and most card expressions are a lookup and a filter or two, so this module compiles
those to plain Python closures that give EXACTLY what the sandboxed Jinja environment gives:

* the template is parsed by the same environment (``environment().parse``), so literal
  text comes from the lexer's ``TemplateData`` (trim_blocks, lstrip_blocks, the dropped trailing
  newline are already applied);
* every operation is the one Jinja's code generator emits for that node: ``str(value)`` for each
  ``{{ }}``, ``environment.getattr`` / ``environment.getitem`` for ``a.b`` / ``a[b]`` (the sandbox's
  own checks), Python slicing for ``a[1:2]``, the environment's filter functions called with the
  same pass-arguments (environment, eval context), ``str_join`` for ``~``, Python operators for
  comparisons, arithmetic, ``and``/``or``/``not`` and inline ``if``;
* names resolve like ``Context.resolve_or_missing``: the context mapping first, then the
  environment's globals.

Anything outside that subset (``{% %}`` statements, ``is`` tests, ``**``, operators the sandbox
intercepts (flanbuild's LimitedSandbox intercepts ``*``), unknown or context-dependent filters,
method calls unless ``extended=True``, environments with finalize/autoescape) makes the compile functions return None: the caller uses
Jinja. Where Jinja would produce an ``Undefined`` (a missing variable, key or attribute, an attribute
the sandbox refuses, an inline ``if`` without ``else`` that is false), a compiled closure raises
:class:`FastPathMiss` instead of guessing; the caller then re-renders with Jinja, which gives its
exact output or its exact error. :func:`renderer` and :func:`evaluator` package that fallback.

The closures are generated Python source in which only names chosen here appear: every literal,
key, attribute name and helper is passed in through the function's namespace, never spliced into
the source text, so template text cannot inject code.
"""

from __future__ import annotations

import functools
import itertools
from typing import Any, Callable, Mapping

import jinja2
import jinja2.runtime
from jinja2 import nodes
from jinja2.filters import FILTERS as _BUILTIN_FILTERS
from jinja2.nodes import EvalContext
from jinja2.parser import Parser
from jinja2.runtime import Undefined, new_context, str_join
from jinja2.utils import _PassArg

__all__ = [
    "FastPathMiss", "FastTemplate", "compile_template", "compile_expression", "renderer", "evaluator",
    "SAFE_FILTERS", "CONTEXT_NEUTRAL_FILTERS",
]


class FastPathMiss(Exception):
    """The fast path cannot give Jinja's answer for this row (something is undefined): use Jinja."""


#: Filters the fast path calls (directly, with Jinja's pass-argument handling). All are pure
#: functions of their arguments that never look at the template context. A filter is used only
#: when the environment's function is still Jinja's built-in (or flanbuild's ``or_join``).
SAFE_FILTERS = frozenset({
    "abs", "capitalize", "center", "count", "d", "default", "first", "float", "indent", "int", "join",
    "last", "length", "list", "lower", "max", "min", "or_join", "replace", "round", "sort", "string",
    "striptags", "sum", "title", "trim", "truncate", "unique", "upper", "wordcount", "wordwrap",
})

#: ``@pass_context`` filters whose only use of the context is ``context.environment`` /
#: ``context.eval_ctx`` and passing it on to the filter or test they apply (checked at compile time
#: to be a SAFE_FILTERS filter or a context-free test). Only with ``extended=True``.
CONTEXT_NEUTRAL_FILTERS = frozenset({"map", "select", "reject"})

#: Tests ``select``/``reject`` may name (context-free, pure).
_SAFE_TESTS = frozenset({
    "boolean", "defined", "divisibleby", "eq", "equalto", "==", "!=", "<", "<=", ">", ">=", "even",
    "false", "float", "ge", "greaterthan", "gt", "in", "integer", "iterable", "le", "lessthan", "lower",
    "lt", "mapping", "ne", "none", "number", "odd", "sameas", "sequence", "string", "true", "undefined",
    "upper",
})

_COMPARE_OPS = {"eq": "==", "ne": "!=", "gt": ">", "gteq": ">=", "lt": "<", "lteq": "<=", "in": "in",
                "notin": "not in"}
_BIN_OPS = {nodes.Add: "+", nodes.Sub: "-", nodes.Mul: "*", nodes.Div: "/", nodes.FloorDiv: "//",
            nodes.Mod: "%"}  # not Pow: ``2 ** 10 ** 10`` is left to Jinja
_RESERVED_NAMES = frozenset({"self"})
MAX_FAST_PIECES = 32  # placeholders of a fast template (each bounded by the sandbox's size limits)  # Jinja binds {{ self }} to a TemplateReference, not the context


def _env() -> jinja2.Environment:
    from flanbuild.sandbox.environment import environment

    return environment()


def _env_supported(env: jinja2.Environment) -> bool:
    """The environment settings this module's code generation assumes (else everything goes to Jinja)."""
    from flanbuild.sandbox.environment import finalize

    return (
        getattr(env, "sandboxed", False) and not env.is_async and env.finalize in (None, finalize)
        and env.autoescape is False and env.context_class is jinja2.runtime.Context
        and type(env).concat is jinja2.Environment.concat
    )


class _Unsupported(Exception):
    """Internal: the node is outside the fast subset (the compile function returns None)."""


def _check(value: Any) -> Any:
    if isinstance(value, Undefined):
        raise FastPathMiss(value._undefined_message)
    return value


def _miss(message: str) -> Any:
    raise FastPathMiss(message)


class _Codegen:
    """Turns a parsed node tree into the source of one Python function, plus its namespace."""

    def __init__(self, env: jinja2.Environment, extended: bool):
        self.env = env
        self.extended = extended
        self._ids = itertools.count()
        globals_ = env.globals

        def resolve_global(name: str) -> Any:  # the context had no such key: Jinja's parent lookup
            if name in globals_:
                return globals_[name]
            raise FastPathMiss(f"{name!r} is undefined")

        def getattr_(obj: Any, attr: str) -> Any:
            return _check(env.getattr(obj, attr))

        def getitem(obj: Any, key: Any) -> Any:
            return _check(env.getitem(obj, key))

        from flanbuild.sandbox import environment as sandbox

        def binop(operator: str, left: Any, right: Any) -> Any:  # an operator the sandbox intercepts
            return env.call_binop(None, operator, left, right)  # type: ignore[attr-defined]

        limited = env.finalize is sandbox.finalize  # flanbuild's policy: {{ }} and ~ of plain values only
        self.ns: dict[str, Any] = {
            "__builtins__": {}, "_str": sandbox.plain_str if limited else str, "_check": _check, "_miss": _miss,
            "_global": resolve_global, "_getattr": getattr_, "_getitem": getitem,
            "_str_join": getattr(env, "concat_limited", str_join), "_env": env,
            "_eval_ctx": EvalContext(env, None), "_binop": binop,
        }
        if extended:
            # What map/select/reject and callables receive as ``context``: only its .environment and
            # .eval_ctx are used by the filters we allow, and callables that want a context miss.
            dummy = new_context(env, None, {}, None, False, env.globals)
            self.ns["_context"] = dummy
            self.ns["_call"] = self._make_call(env, dummy)

    @staticmethod
    def _make_call(env: jinja2.Environment, context: Any) -> Callable[..., Any]:
        def call(obj: Any, *args: Any, **kwargs: Any) -> Any:
            # Context.call would hand a context/eval context/environment to such callables: use Jinja.
            if _PassArg.from_obj(obj) is not None or (
                    hasattr(obj, "__call__") and _PassArg.from_obj(obj.__call__) is not None):  # noqa: B004
                raise FastPathMiss("callable wants the template context")
            return _check(env.call(context, obj, *args, **kwargs))  # the sandbox's own call checks

        return call

    def bind(self, value: Any, prefix: str = "_k") -> str:
        name = f"{prefix}{next(self._ids)}"
        self.ns[name] = value
        return name

    # -- expressions ---------------------------------------------------------------------------
    def expr(self, node: nodes.Node) -> str:
        method = getattr(self, f"_{type(node).__name__}", None)
        if method is None:
            raise _Unsupported(type(node).__name__)
        return method(node)

    def _Const(self, node: nodes.Const) -> str:
        return self.bind(node.value)

    def _Name(self, node: nodes.Name) -> str:
        if node.ctx != "load" or node.name in _RESERVED_NAMES:
            raise _Unsupported("name")
        key = self.bind(node.name)
        return f"(ctx[{key}] if {key} in ctx else _global({key}))"

    def _Getattr(self, node: nodes.Getattr) -> str:
        if node.ctx != "load" or node.attr.startswith("_"):
            raise _Unsupported("attribute")  # the sandbox refuses _names; let Jinja say so
        return f"_getattr({self.expr(node.node)}, {self.bind(node.attr)})"

    def _Getitem(self, node: nodes.Getitem) -> str:
        if node.ctx != "load":
            raise _Unsupported("item")
        obj = self.expr(node.node)
        if isinstance(node.arg, nodes.Slice):  # Jinja slices directly, bypassing environment.getitem
            s = node.arg
            parts = [self.expr(p) if p is not None else "" for p in (s.start, s.stop, s.step)]
            return f"{obj}[{parts[0]}:{parts[1]}:{parts[2]}]"
        return f"_getitem({obj}, {self.expr(node.arg)})"

    def _args(self, node: nodes.Filter | nodes.Call) -> str:
        if node.dyn_args is not None or node.dyn_kwargs is not None:
            raise _Unsupported("*args/**kwargs")
        out = [self.expr(a) for a in node.args]
        if node.kwargs:
            out.append("**{" + ", ".join(f"{self.bind(k.key)}: {self.expr(k.value)}" for k in node.kwargs) + "}")
        return "".join(f", {a}" for a in out)

    def _filter_allowed(self, name: str) -> bool:
        from flanbuild.sandbox.environment import BOUNDED_FILTERS, or_join

        func = self.env.filters.get(name)
        if name == "or_join":
            return func is or_join
        return name in SAFE_FILTERS and func is not None and (
            func is _BUILTIN_FILTERS.get(name) or func is BOUNDED_FILTERS.get(name))

    def _Filter(self, node: nodes.Filter) -> str:
        if node.node is None:
            raise _Unsupported("filter block")
        name = node.name
        func = self.env.filters.get(name)
        if name in CONTEXT_NEUTRAL_FILTERS and self.extended and func is _BUILTIN_FILTERS.get(name):
            self._check_context_neutral(node)
        elif not self._filter_allowed(name):
            raise _Unsupported(f"filter {name}")
        # what Jinja's code generator passes first (SAFE_FILTERS has no @pass_context filter; only the
        # context-neutral ones, in extended mode, get the stand-in context)
        lead = {None: "", _PassArg.environment: "_env, ", _PassArg.eval_context: "_eval_ctx, ",
                _PassArg.context: "_context, "}[_PassArg.from_obj(func)]
        return f"_check({self.bind(func, '_f')}({lead}{self.expr(node.node)}{self._args(node)}))"

    def _check_context_neutral(self, node: nodes.Filter) -> None:
        """map/select/reject: allowed when what they apply is known not to need the context."""
        first = node.args[0] if node.args else None
        if node.name == "map":
            if first is None:  # map(attribute="x"[, default=...]): environment.getitem per item
                if {k.key for k in node.kwargs} - {"attribute", "default"} or not node.kwargs:
                    raise _Unsupported("map")
                return
            if not (isinstance(first, nodes.Const) and isinstance(first.value, str)
                    and self._filter_allowed(first.value)):
                raise _Unsupported("map with an unknown filter")
            if _PassArg.from_obj(self.env.filters[first.value]) is _PassArg.context:
                raise _Unsupported("map with a context filter")
            return
        if first is None and not node.kwargs:
            return  # select / reject by truthiness
        if not (isinstance(first, nodes.Const) and isinstance(first.value, str) and first.value in _SAFE_TESTS
                and first.value in self.env.tests and _PassArg.from_obj(self.env.tests[first.value]) is None):
            raise _Unsupported(f"{node.name} with an unknown test")

    def _Call(self, node: nodes.Call) -> str:
        if not self.extended:
            raise _Unsupported("call")
        return f"_call({self.expr(node.node)}{self._args(node)})"

    def _CondExpr(self, node: nodes.CondExpr) -> str:
        if node.expr2 is None:  # Jinja gives an Undefined here: let it
            otherwise = f"_miss({self.bind('inline if without else evaluated to false')})"
        else:
            otherwise = self.expr(node.expr2)
        return f"({self.expr(node.expr1)} if {self.expr(node.test)} else {otherwise})"

    def _Compare(self, node: nodes.Compare) -> str:
        out = [self.expr(node.expr)]
        for op in node.ops:
            if op.op not in _COMPARE_OPS:
                raise _Unsupported(f"comparison {op.op}")
            out.append(f"{_COMPARE_OPS[op.op]} {self.expr(op.expr)}")
        return "(" + " ".join(out) + ")"

    def _And(self, node: nodes.And) -> str:
        return f"({self.expr(node.left)} and {self.expr(node.right)})"

    def _Or(self, node: nodes.Or) -> str:
        return f"({self.expr(node.left)} or {self.expr(node.right)})"

    def _Not(self, node: nodes.Not) -> str:
        return f"(not {self.expr(node.node)})"

    def _Neg(self, node: nodes.Neg) -> str:
        return f"(-{self.expr(node.node)})"

    def _Pos(self, node: nodes.Pos) -> str:
        return f"(+{self.expr(node.node)})"

    def _binop(self, node: nodes.BinExpr) -> str:
        if node.operator in self.env.intercepted_binops:  # type: ignore[attr-defined]
            if not hasattr(self.env, "concat_limited"):
                raise _Unsupported("intercepted operator")
            # flanbuild's LimitedSandbox: the same size checks Jinja's code makes, then the operator
            return f"_binop({self.bind(node.operator)}, {self.expr(node.left)}, {self.expr(node.right)})"
        return f"({self.expr(node.left)} {_BIN_OPS[type(node)]} {self.expr(node.right)})"

    _Add = _Sub = _Mul = _Div = _FloorDiv = _Mod = _binop

    def _Concat(self, node: nodes.Concat) -> str:
        return "_str_join((" + "".join(f"{self.expr(n)}, " for n in node.nodes) + "))"

    def _List(self, node: nodes.List) -> str:
        return "[" + ", ".join(self.expr(n) for n in node.items) + "]"

    def _Tuple(self, node: nodes.Tuple) -> str:
        if node.ctx != "load":
            raise _Unsupported("tuple target")
        return "(" + "".join(f"{self.expr(n)}, " for n in node.items) + ")"

    def _Dict(self, node: nodes.Dict) -> str:
        return "{" + ", ".join(f"{self.expr(p.key)}: {self.expr(p.value)}" for p in node.items) + "}"

    # -- unary operators the sandbox might intercept -------------------------------------------
    def check_unops(self) -> None:
        if self.env.intercepted_unops:  # type: ignore[attr-defined]
            raise _Unsupported("intercepted unary operators")

    # -- building the function -------------------------------------------------------------------
    def function(self, body: str) -> Callable[[Mapping[str, Any]], Any]:
        src = f"def _fast(ctx):\n    return {body}\n"
        code = compile(src, "<flanbuild.sandbox.fastpath>", "exec")
        exec(code, self.ns)  # noqa: S102 - the source holds only names generated above
        fn = self.ns["_fast"]
        fn.source = src  # for debugging
        return fn


def _template_body(gen: _Codegen, tree: nodes.Template) -> str:
    parts: list[str] = []  # source of each piece: literal text merged, one str(...) per {{ }}
    text: list[str] = []
    for stmt in tree.body:
        if not isinstance(stmt, nodes.Output):
            raise _Unsupported(type(stmt).__name__)
        for child in stmt.nodes:
            if isinstance(child, nodes.TemplateData):
                text.append(child.data)
                continue
            if text:
                parts.append(gen.bind("".join(text)))
                text = []
            parts.append(f"_str({gen.expr(child)})")
    if text:
        parts.append(gen.bind("".join(text)))
    if sum(not p.startswith("_k") for p in parts) > MAX_FAST_PIECES:
        raise _Unsupported("many placeholders")  # Jinja streams them under the output limit
    if len(parts) <= 1:
        return parts[0] if parts else gen.bind("")
    return "''.join((" + ", ".join(parts) + ",))"


@functools.lru_cache(maxsize=8192)
def compile_template(source: str, *, extended: bool = False) -> Callable[[Mapping[str, Any]], str] | None:
    """A closure ``ctx -> str`` equal to ``environment().from_string(source).render(ctx)``, or None.

    None means the template uses something outside the fast subset: render it with Jinja. The
    closure raises :class:`FastPathMiss` where Jinja would meet an undefined value (and may raise
    what the same Python operation raises in Jinja); re-render with Jinja then (see :func:`renderer`).
    ``extended`` also allows method calls (through the sandbox's ``call``) and map/select/reject.
    """
    env = _env()
    if not _env_supported(env):
        return None
    try:
        from flanbuild.sandbox.environment import parse

        tree = parse(source) if env is _env() else env.parse(source)
        gen = _Codegen(env, extended)
        gen.check_unops()
        body = _template_body(gen, tree)
        return gen.function(body)
    except (_Unsupported, jinja2.TemplateSyntaxError, jinja2.exceptions.SecurityError, SyntaxError, RecursionError,
            MemoryError, ValueError):
        return None


@functools.lru_cache(maxsize=8192)
def compile_expression(source: str, *, extended: bool = False) -> Callable[[Mapping[str, Any]], Any] | None:
    """A closure ``row -> value`` equal to ``environment().compile_expression(source,
    undefined_to_none=False)(**row)``, or None when the expression is outside the fast subset.

    Where Jinja would return (or stumble on) an Undefined, the closure raises :class:`FastPathMiss`.
    """
    env = _env()
    if not _env_supported(env):
        return None
    try:
        parser = Parser(env, source, state="variable")
        expr = parser.parse_expression()
        if not parser.stream.eos:
            return None
        if any(n.name == "result" for n in expr.find_all(nodes.Name)):
            return None  # compile_expression assigns to ``result``: leave self-reference to Jinja
        gen = _Codegen(env, extended)
        gen.check_unops()
        return gen.function(gen.expr(expr))
    except (_Unsupported, jinja2.TemplateSyntaxError, jinja2.exceptions.SecurityError, SyntaxError, RecursionError,
            MemoryError, ValueError):
        return None


@functools.lru_cache(maxsize=8192)
def renderer(source: str, *, extended: bool = False) -> Callable[[Mapping[str, Any]], str]:
    """``ctx -> str`` with Jinja's exact output and errors: the fast closure, Jinja where it cannot."""
    from flanbuild.sandbox.environment import time_budget

    template = _env().from_string(source)
    fast = compile_template(source, extended=extended)

    def slow(ctx: Mapping[str, Any]) -> str:
        with time_budget():
            return template.render(ctx)

    if fast is None:
        return slow

    def render(ctx: Mapping[str, Any]) -> str:
        try:
            return fast(ctx)
        except Exception:  # noqa: BLE001 - FastPathMiss or a real error: Jinja gives the answer/message
            return slow(ctx)

    render.fast = fast  # type: ignore[attr-defined]
    return render


@functools.lru_cache(maxsize=8192)
def evaluator(source: str, *, extended: bool = False) -> Callable[[Mapping[str, Any]], Any]:
    """``row -> value`` like the compiled Jinja expression (``undefined_to_none=False``), fast where possible."""
    from flanbuild.sandbox.environment import evaluate_limited, parse_expression

    parse_expression(source)  # structural limits (nesting, filter chains) before compiling
    compiled = _env().compile_expression(source, undefined_to_none=False)
    fast = compile_expression(source, extended=extended)
    if fast is None:
        return lambda row: evaluate_limited(compiled, row)

    def evaluate(row: Mapping[str, Any]) -> Any:
        try:
            return fast(row)
        except Exception:  # noqa: BLE001 - FastPathMiss or a real error: Jinja gives the value/message
            return evaluate_limited(compiled, row)

    evaluate.fast = fast  # type: ignore[attr-defined]
    return evaluate


class FastTemplate:
    """What flanbuild uses of a ``jinja2.Template`` (``render``, ``generate``), fast where possible.

    ``generate`` yields the whole text at once, so ``environment.render_limited`` works unchanged (its
    size check sees the same total and raises the same error). ``jinja`` is the Jinja template.
    """

    __slots__ = ("source", "jinja", "fast", "_render")

    def __init__(self, source: str, *, extended: bool = False):
        self.source = source
        self.jinja = _env().from_string(source)
        self.fast = compile_template(source, extended=extended)
        self._render = renderer(source, extended=extended)

    def render(self, *args: Any, **kwargs: Any) -> str:
        ctx = args[0] if len(args) == 1 and not kwargs else dict(*args, **kwargs)
        return self._render(ctx)

    def generate(self, *args: Any, **kwargs: Any):
        if self.fast is None:  # Jinja's stream, so an output limit stops a runaway loop early
            yield from self.jinja.generate(*args, **kwargs)
            return
        yield self.render(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<FastTemplate {'fast' if self.fast else 'jinja'} {self.source[:40]!r}>"
