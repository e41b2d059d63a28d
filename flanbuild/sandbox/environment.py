"""The one sandboxed Jinja environment every untrusted template and card expression runs in.

Templates, card expressions and third-party prompt collections are untrusted data, so they are
compiled by Jinja's ``ImmutableSandboxedEnvironment`` with ``StrictUndefined`` (no access to Python
internals, no mutation of the row, a misspelt field is an error), plus one resource policy for
everything that renders untrusted Jinja (flanbuild templates, card expressions, promptsource):

* **sizes are checked before the work**: ``*``, ``**``, ``+``, ``%``, ``~``, ``join``, ``replace``,
  ``indent``, ``center``, ``format``, ``batch``, ``slice``, ``tojson``, ``string``, ``sum``, string
  methods with widths (``center``, ``ljust``, ``zfill``, ``expandtabs``...) and ``str.format`` widths
  are refused when the string, list or integer they would build passes the limits below;
* **structure is bounded when a template is loaded**: loop nesting, expression nesting depth and
  filter chain length (deeply nested input never reaches Python's recursion limit);
* **macros** may nest at most ``MAX_MACRO_DEPTH`` calls deep and make ``MAX_MACRO_CALLS`` calls per render;
* **time**: each render and each card expression evaluated by Jinja has a CPU budget
  (``FLANBUILD_RENDER_SECONDS``, default 10 s), enforced by a profiling timer in the main thread
  and by deadline checks in the sandbox's hooks elsewhere;
* **output** is streamed and cut at the caller's limit;
* **no object reprs**: only plain values (strings, numbers, booleans, None, and lists/tuples/dicts of
  them) may be rendered, joined, concatenated or formatted; ``<function ... at 0x7f...>`` never
  reaches the output. ``random`` and ``lipsum`` are refused (nondeterministic).

Everything that renders untrusted Jinja goes through this module.
"""

from __future__ import annotations

import contextlib
import datetime
import decimal
import functools
import os
import re
import signal
import threading
import time
import types

import jinja2
import jinja2.meta
from jinja2 import nodes
from jinja2.compiler import CodeGenerator
from jinja2.filters import FILTERS as _BUILTIN_FILTERS
from jinja2.runtime import Macro, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedFormatter
from jinja2.exceptions import SecurityError
from markupsafe import Markup


def or_join(items, word: str = "or") -> str:
    """``["a", "b", "c"] | or_join`` -> ``"a, b or c"``: options written inline in a question."""
    items = [str(i) for i in items]
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} {word} {items[-1]}"


MAX_LOOP_DEPTH = 2  # nested {% for %} loops a template may have
MAX_SEQUENCE = 100_000  # longest string or list a template may build with * (and the range() limit)
MAX_STRING = 1_000_000  # longest string any operation may build (the output limit of one render)
MAX_ITEMS = 100_000  # longest list any operation may build
MAX_INT_BITS = 100_000  # largest integer (in bits) arithmetic may build (about 30,000 digits)
MAX_NESTING = 48  # deepest expression/statement nesting of a template or card expression
MAX_FILTER_CHAIN = 32  # longest chain of filters applied one after another
MAX_MACRO_DEPTH = 24  # macro calls nested inside each other (recursion)
MAX_MACRO_CALLS = 20_000  # macro calls in one render
MAX_PLAIN_DEPTH = 32  # nesting of lists/dicts that may be rendered


def render_seconds() -> float:
    """The CPU budget of one render or card expression (``FLANBUILD_RENDER_SECONDS``, default 10)."""
    try:
        value = float(os.environ.get("FLANBUILD_RENDER_SECONDS", "10"))
    except ValueError:
        value = 10.0
    return value if value > 0 and value == value else 10.0


class RenderTimeout(SecurityError):
    """A render or expression ran past its CPU budget."""


# -- per-thread render state --------------------------------------------------------------------

class _State(threading.local):
    def __init__(self) -> None:
        self.depth = 0  # nesting of time_budget()
        self.deadline = 0.0  # time.process_time() deadline in threads without the timer (0 = none)
        self.macro_depth = 0
        self.macro_calls = 0


_STATE = _State()
_TIMER_INSTALLED = False


def _on_timer(signum, frame):  # noqa: ARG001
    if _STATE.depth:
        raise RenderTimeout(f"render took longer than its {render_seconds():g} s CPU budget")


def _install_timer() -> bool:
    """The SIGPROF handler, once per process, in the main thread only."""
    global _TIMER_INSTALLED
    if _TIMER_INSTALLED:
        return True
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        return False
    try:
        if signal.getsignal(signal.SIGPROF) not in (signal.SIG_DFL, signal.SIG_IGN, None):
            return False  # a profiler owns it: fall back to the deadline checks
        signal.signal(signal.SIGPROF, _on_timer)
    except (ValueError, OSError):
        return False
    _TIMER_INSTALLED = True
    return True


@contextlib.contextmanager
def time_budget():
    """Run the body under the per-render CPU budget (nested uses share the outermost budget)."""
    state = _STATE
    if state.depth:
        state.depth += 1
        try:
            yield
        finally:
            state.depth -= 1
        return
    seconds = render_seconds()
    timer = threading.current_thread() is threading.main_thread() and _install_timer()
    state.depth, state.macro_depth, state.macro_calls = 1, 0, 0
    state.deadline = 0.0 if timer else time.process_time() + seconds
    if timer:
        signal.setitimer(signal.ITIMER_PROF, seconds)
    try:
        yield
    finally:
        if timer:
            signal.setitimer(signal.ITIMER_PROF, 0)
        state.depth, state.deadline = 0, 0.0


def _tick() -> None:
    """Deadline check for threads without the timer (called from the sandbox's hooks)."""
    deadline = _STATE.deadline
    if deadline and time.process_time() > deadline:
        raise RenderTimeout(f"render took longer than its {render_seconds():g} s CPU budget")


# -- plain values -------------------------------------------------------------------------------

_SCALARS = (str, int, float, type(None), datetime.date, datetime.time, datetime.timedelta, decimal.Decimal)


def _refuse_object(value) -> None:
    raise SecurityError(f"cannot render a {type(value).__name__} value (only strings, numbers, booleans, None "
                        f"and lists/dicts of them; object reprs are refused)")


def plain_size(value, limit: int = MAX_STRING, what: str = "value") -> int:
    """About ``len(str(value))`` for plain data, refusing objects (their reprs) and oversized values.

    Walks lists/tuples/dicts without recursion and stops as soon as the size passes ``limit``.
    """
    t = type(value)
    if t is str:
        size = len(value)
    elif t is int or t is bool:
        size = value.bit_length() // 3 + 2 if t is int else 5
    elif t is float or value is None:
        size = 24
    else:
        size = _walk_size(value, limit, what)
    if size > limit:
        raise SecurityError(f"{what} longer than {limit} characters")
    return size


def _item_size(item) -> int | None:
    """The printed size of a scalar item (None for containers and anything else)."""
    if isinstance(item, str):
        return len(item) + 2
    if isinstance(item, bool) or item is None:
        return 5
    if isinstance(item, int):
        return item.bit_length() // 3 + 2
    if isinstance(item, _SCALARS):
        return 32
    if isinstance(item, bytes):
        return 3 + 4 * len(item)
    if isinstance(item, Undefined):
        return len(str(item))  # StrictUndefined raises its own error here
    return None


def _walk_size(value, limit: int, what: str) -> int:
    size = 0
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        scalar = _item_size(item)
        if scalar is not None:
            size += scalar
        elif isinstance(item, (list, tuple, dict)):
            if depth >= MAX_PLAIN_DEPTH:
                raise SecurityError(f"{what} nested deeper than {MAX_PLAIN_DEPTH} levels")
            if len(item) > limit:
                raise SecurityError(f"{what} longer than {limit} characters")
            size += 2
            children = (c for kv in item.items() for c in kv) if isinstance(item, dict) else item
            stack.extend((c, depth + 1) for c in children)
        else:
            _refuse_object(item)
        if size > limit:
            raise SecurityError(f"{what} longer than {limit} characters")
    return size


def finalize(value):
    """What ``{{ value }}`` may print: plain values only (never an object's repr)."""
    if type(value) is str:
        return value
    plain_size(value, MAX_STRING, "rendered value")
    return value


def plain_str(value) -> str:
    """``str(finalize(value))``: the fast path's ``{{ }}``."""
    t = type(value)
    if t is str:
        return value
    if t is int or t is float or t is bool:
        return str(value)
    return str(finalize(value))


def concat(values) -> str:
    """The ``~`` operator, size-checked first."""
    total = 0
    for v in values:
        total += len(v) if type(v) is str else plain_size(v, MAX_STRING, "'~' result")
        if total > MAX_STRING:
            raise SecurityError(f"'~' would build a string longer than {MAX_STRING}")
    return "".join(map(str, values))


def _as_list(value, what: str, limit: int = MAX_ITEMS) -> list:
    """An iterable as a list, refusing more than ``limit`` items (without building more)."""
    if isinstance(value, (list, tuple)):
        if len(value) > limit:
            raise SecurityError(f"{what}: more than {limit} items")
        return list(value)
    if isinstance(value, str):
        return list(value) if len(value) <= MAX_STRING else _too_long(what)
    out = []
    for item in value:
        out.append(item)
        if len(out) > limit:
            raise SecurityError(f"{what}: more than {limit} items")
    return out


def _too_long(what: str):
    raise SecurityError(f"{what} would build a string longer than {MAX_STRING}")


def _check_width(n, what: str, limit: int = MAX_STRING) -> None:
    if isinstance(n, int) and not isinstance(n, bool) and n > limit:
        raise SecurityError(f"{what}: {n} is larger than {limit}")


# -- %-formatting and str.format ------------------------------------------------------------------

_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?[a-zA-Z%]")
_FORMAT_NUMBERS = re.compile(r"\d+")


def check_percent(fmt: str, args) -> None:
    """``fmt % args``: widths and precisions bounded, arguments plain; checked before formatting."""
    total = len(fmt)
    for m in _PERCENT_SPEC.finditer(fmt):
        for group in m.groups():
            if group == "*":
                raise SecurityError("'%' with a '*' width is refused")
            if group is not None:
                total += int(group) if len(group) < 9 else MAX_STRING + 1
    if total > MAX_STRING:
        _too_long("'%' formatting")
    values = args.values() if isinstance(args, dict) else args if isinstance(args, tuple) else (args,)
    for v in values:
        total += plain_size(v, MAX_STRING, "'%' argument")
        if total > MAX_STRING:
            _too_long("'%' formatting")


def check_format_spec(spec: str) -> None:
    if "{" in spec:
        raise SecurityError("nested format specifications are refused")
    for number in _FORMAT_NUMBERS.findall(spec):
        if len(number) > 7 or int(number) > MAX_STRING:
            raise SecurityError(f"format width {number} is larger than {MAX_STRING}")


class _BoundedFormatter(SandboxedFormatter):
    """str.format in templates: widths bounded, only plain values formatted (no reprs)."""

    def format_field(self, value, format_spec):
        check_format_spec(format_spec)
        plain_size(value, MAX_STRING, "str.format argument")
        return super().format_field(value, format_spec)

    def convert_field(self, value, conversion):
        plain_size(value, MAX_STRING, "str.format argument")
        return super().convert_field(value, conversion)


# -- bounded filters ----------------------------------------------------------------------------

def _bounded(name: str):
    """Decorator: a bounded version of Jinja's filter ``name`` (same pass-argument, same output)."""
    original = _BUILTIN_FILTERS[name]

    def wrap(check):
        @functools.wraps(original)
        def filter_(*args, **kwargs):
            return check(original, *args, **kwargs)

        filter_.bounded_original = original
        return filter_

    return wrap


@_bounded("join")
def _join(original, eval_ctx, value, d="", attribute=None):
    items = _as_list(value, "join")
    if attribute is not None:
        return original(eval_ctx, items, d, attribute)
    total = len(str(d)) * max(0, len(items) - 1)
    for item in items:
        total += len(item) if type(item) is str else plain_size(item, MAX_STRING, "join item")
        if total > MAX_STRING:
            _too_long("join")
    return original(eval_ctx, items, d, attribute)


@_bounded("replace")
def _replace(original, eval_ctx, s, old, new, count=None):
    if isinstance(s, str) and isinstance(old, str) and isinstance(new, str):
        hits = len(s) + 1 if not old else s.count(old)
        if count is not None and isinstance(count, int):
            hits = min(hits, max(count, 0)) if count >= 0 else hits
        if len(s) + hits * (len(new) - len(old)) > MAX_STRING:
            _too_long("replace")
    else:
        plain_size(s, MAX_STRING, "replace input")
    return original(eval_ctx, s, old, new, count)


@_bounded("indent")
def _indent(original, s, width=4, first=False, blank=False):
    pad = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
    text_len = len(s) if isinstance(s, str) else plain_size(s, MAX_STRING, "indent input")
    lines = (s.count("\n") + 1) if isinstance(s, str) else 1
    if pad < 0 or text_len + lines * pad > MAX_STRING:
        _too_long("indent")
    return original(s, width, first, blank)


@_bounded("center")
def _center(original, value, width=80):
    _check_width(width, "center width")
    return original(value, width)


@_bounded("format")
def _format(original, value, *args, **kwargs):
    check_percent(str(value), kwargs or args)
    return original(value, *args, **kwargs)


@_bounded("batch")
def _batch(original, value, linecount, fill_with=None):
    _check_width(linecount, "batch size", MAX_ITEMS)
    return original(_as_list(value, "batch"), linecount, fill_with)


@_bounded("slice")
def _slice(original, eval_ctx, value, slices, fill_with=None):  # an async_variant: eval context first
    _check_width(slices, "slice count", MAX_ITEMS)
    return original(eval_ctx, _as_list(value, "slice"), slices, fill_with)


@_bounded("tojson")
def _tojson(original, eval_ctx, value, indent=None):
    size = plain_size(value, MAX_STRING, "tojson input")
    if isinstance(indent, int) and not isinstance(indent, bool) and size * (1 + max(indent, 0)) > MAX_STRING:
        _too_long("tojson")
    return original(eval_ctx, value, indent)


@_bounded("string")
def _string(original, value):
    plain_size(value, MAX_STRING, "string")
    return original(value)


@_bounded("pprint")
def _pprint(original, value):
    plain_size(value, MAX_STRING // 4, "pprint")
    return original(value)


@_bounded("unique")
def _unique(original, environment, value, case_sensitive=False, attribute=None):
    items = _as_list(value, "unique")
    for item in items:
        if attribute is None and not isinstance(item, (str, int, float, type(None), tuple)):
            _refuse_object(item)
    return original(environment, items, case_sensitive, attribute)


@_bounded("sum")
def _sum(original, environment, iterable, attribute=None, start=0):
    items = _as_list(iterable, "sum")
    if attribute is None and isinstance(start, (list, tuple, str)) or any(isinstance(i, (list, tuple)) for i in items):
        total = len(start) if isinstance(start, (list, tuple, str)) else 0
        for item in items:
            total += len(item) if isinstance(item, (list, tuple, str)) else 1
            if total > MAX_ITEMS:
                raise SecurityError(f"sum would build a list longer than {MAX_ITEMS}")
        if isinstance(start, (list, tuple)) and all(type(i) is type(start) for i in items):
            out = list(start)  # the same result as repeated '+', in linear time
            for item in items:
                out.extend(item)
            return type(start)(out)
    return original(environment, items, attribute, start)


@_bounded("wordwrap")
def _wordwrap(original, environment, s, width=79, break_long_words=True, wrapstring=None, break_on_hyphens=True):
    if isinstance(wrapstring, str) and isinstance(s, str) and len(s) * (len(wrapstring) + 1) > MAX_STRING:
        _too_long("wordwrap")
    return original(environment, s, width, break_long_words, wrapstring, break_on_hyphens)


@_bounded("random")
def _random(original, context, seq):  # noqa: ARG001
    raise SecurityError("the 'random' filter is nondeterministic and refused (the same build must give the "
                        "same bytes)")


def _lipsum(*args, **kwargs):  # noqa: ARG001
    raise SecurityError("lipsum() is nondeterministic and refused (the same build must give the same bytes)")


#: flanbuild's bounded replacements of Jinja's built-in filters (same names, same outputs when in bounds).
BOUNDED_FILTERS = {
    "join": _join, "replace": _replace, "indent": _indent, "center": _center, "format": _format,
    "batch": _batch, "slice": _slice, "tojson": _tojson, "string": _string, "pprint": _pprint,
    "unique": _unique, "sum": _sum, "wordwrap": _wordwrap, "random": _random,
}


def builtin_filter(func):
    """Jinja's own filter behind ``func`` (itself when it is not one of BOUNDED_FILTERS)."""
    return getattr(func, "bounded_original", func)


# -- string methods with widths -------------------------------------------------------------------

_WIDTH_METHODS = {"center", "ljust", "rjust", "zfill"}


def _check_method_call(obj, args: tuple, kwargs: dict) -> tuple:
    """Bounds for the methods of builtin values a template may call (``'x'.center(10**9)``...).

    Returns the positional arguments to call with (an iterator argument is read into a list once).
    """
    owner = getattr(obj, "__self__", None)
    if not isinstance(obj, types.BuiltinMethodType) or owner is None or isinstance(owner, types.ModuleType):
        return args
    name = obj.__name__
    values = (*args, *kwargs.values())
    if isinstance(owner, (str, bytes)):
        args = _check_str_method(owner, name, args, values)
    for v in values:  # e.g. (1).to_bytes(10**9): no builtin method gets a size beyond the limits
        _check_width(v, f"argument of {name}")
    return args


def _check_str_method(owner, name: str, args: tuple, values: tuple) -> tuple:
    if name in _WIDTH_METHODS:
        for v in values:
            _check_width(v, f"str.{name} width")
    elif name == "expandtabs":
        size = values[0] if values else 8
        tab = "\t" if isinstance(owner, str) else b"\t"
        if isinstance(size, int) and len(owner) + owner.count(tab) * max(size, 0) > MAX_STRING:
            _too_long("expandtabs")
    elif name == "join" and args:
        items = _as_list(args[0], "join")
        total = sum(len(owner) + (len(i) if isinstance(i, (str, bytes)) else 0) for i in items)
        if total > MAX_STRING:
            _too_long("join")
        args = (items, *args[1:])
    elif name == "replace" and len(values) >= 2 and isinstance(values[0], type(owner)):
        old, new = values[0], values[1]
        hits = len(owner) + 1 if not old else owner.count(old)
        if isinstance(new, (str, bytes)) and len(owner) + hits * (len(new) - len(old)) > MAX_STRING:
            _too_long("replace")
    return args


# -- the environment ------------------------------------------------------------------------------

class _LimitedCodeGenerator(CodeGenerator):
    """Jinja's code generator, with ``~`` going through the size-checked ``environment.concat``."""

    def visit_Concat(self, node: nodes.Concat, frame) -> None:
        self.write("environment.concat_limited((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


def _check_mul(left, right) -> None:
    for seq, times in ((left, right), (right, left)):
        if isinstance(seq, (str, list, tuple)) and isinstance(times, int) and len(seq) * times > MAX_SEQUENCE:
            raise SecurityError(f"'*' would build a sequence longer than {MAX_SEQUENCE}")
    if isinstance(left, int) and isinstance(right, int) and left.bit_length() + right.bit_length() > MAX_INT_BITS:
        raise SecurityError(f"'*' would build an integer larger than {MAX_INT_BITS} bits")


def _check_pow(left, right) -> None:
    if isinstance(right, (int, float)) and abs(right) > 100:
        raise SecurityError("'**' with an exponent above 100 is refused")
    if isinstance(left, int) and isinstance(right, int) and right > 0 and left.bit_length() * right > MAX_INT_BITS:
        raise SecurityError(f"'**' would build an integer larger than {MAX_INT_BITS} bits")


def _check_add(left, right) -> None:
    if isinstance(left, str) and isinstance(right, str) and len(left) + len(right) > MAX_STRING:
        _too_long("'+'")
    if isinstance(left, (list, tuple)) and isinstance(right, (list, tuple)) and len(left) + len(right) > MAX_ITEMS:
        raise SecurityError(f"'+' would build a list longer than {MAX_ITEMS}")


def _check_mod(left, right) -> None:
    if isinstance(left, str):
        check_percent(left, right)


_BINOP_CHECKS = {"*": _check_mul, "**": _check_pow, "+": _check_add, "%": _check_mod}


class LimitedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, plus the resource policy of this module (see the module docstring)."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})
    code_generator_class = _LimitedCodeGenerator
    concat_limited = staticmethod(concat)

    def call_binop(self, context, operator, left, right):
        _tick()
        check = _BINOP_CHECKS.get(operator)
        if check is not None:
            check(left, right)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - Jinja's signature
        _tick()
        if isinstance(__obj, Macro):
            state = _STATE
            state.macro_calls += 1
            if state.macro_calls > MAX_MACRO_CALLS:
                raise SecurityError(f"more than {MAX_MACRO_CALLS} macro calls in one render")
            if state.macro_depth >= MAX_MACRO_DEPTH:
                raise SecurityError(f"macro calls nested deeper than {MAX_MACRO_DEPTH} (recursion)")
            state.macro_depth += 1
            try:
                return super().call(__context, __obj, *args, **kwargs)
            finally:
                state.macro_depth -= 1
        args = _check_method_call(__obj, args, kwargs)
        if __obj is _BUILTIN_FILTERS.get("random"):
            _random(None, None, None)
        return super().call(__context, __obj, *args, **kwargs)

    def unsafe_undefined(self, obj, attribute):
        """Refuse at once where a lenient Undefined would print an unsafe attribute as '' (promptsource)."""
        if issubclass(self.undefined, jinja2.StrictUndefined):
            return super().unsafe_undefined(obj, attribute)  # raises SecurityError when used
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe.")

    def wrap_str_format(self, value):
        fmt = super().wrap_str_format(value)
        if fmt is None or isinstance(value.__self__, Markup):
            return fmt
        f_self = value.__self__
        is_format_map = value.__name__ == "format_map"
        vformat = _BoundedFormatter(self).vformat

        def wrapper(*args, **kwargs):
            if len(f_self) > MAX_STRING:
                _too_long("str.format")
            if is_format_map:
                if kwargs:
                    raise TypeError("format_map() takes no keyword arguments")
                if len(args) != 1:
                    raise TypeError(f"format_map() takes exactly one argument ({len(args)} given)")
                kwargs, args = args[0], ()
            return type(f_self)(vformat(f_self, args, kwargs))

        return functools.update_wrapper(wrapper, value)


def _install_policy(env: LimitedSandbox) -> LimitedSandbox:
    env.finalize = finalize
    env.filters.update(BOUNDED_FILTERS)
    env.filters["or_join"] = or_join
    env.globals["range"] = _bounded_range
    env.globals["lipsum"] = _lipsum
    return env


def make_environment(**settings) -> LimitedSandbox:
    """A LimitedSandbox with the resource policy installed (other Jinja settings as given)."""
    return _install_policy(LimitedSandbox(**settings))


#: Methods that grow a list, dict or set, with how many items each call may add (None: len of the argument).
_GROWING = {"append": 1, "insert": 1, "add": 1, "setdefault": 1, "extend": None, "update": None}


class MutableLimitedSandbox(LimitedSandbox):
    """LimitedSandbox that also allows the mutation methods of lists, dicts and sets (``.append``,
    ``.update``, ``.pop``...), as Jinja's plain SandboxedEnvironment does (promptsource renders there).

    Only for values local to one render: callers hand the template copies of the row's containers
    (see flanbuild.sources.promptsource). Every other check of LimitedSandbox applies unchanged; growth
    is bounded too (no list, dict or set past MAX_ITEMS items).
    """

    def is_safe_attribute(self, obj, attr, value):
        return jinja2.sandbox.SandboxedEnvironment.is_safe_attribute(self, obj, attr, value)

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - Jinja's signature
        owner = getattr(__obj, "__self__", None)
        added = _GROWING.get(getattr(__obj, "__name__", ""), 0)
        if isinstance(owner, (list, dict, set)) and isinstance(__obj, types.BuiltinMethodType) and added != 0:
            if added is None and args:
                args = (_as_list(args[0], __obj.__name__) if not isinstance(args[0], dict) else args[0], *args[1:])
                added = len(args[0])
            if len(owner) + (added or 0) + len(kwargs) > MAX_ITEMS:
                raise SecurityError(f"{__obj.__name__} would build a {type(owner).__name__} longer than {MAX_ITEMS}")
        return super().call(__context, __obj, *args, **kwargs)


def make_mutable_environment(**settings) -> MutableLimitedSandbox:
    """A MutableLimitedSandbox with the same resource policy as make_environment."""
    return _install_policy(MutableLimitedSandbox(**settings))


@functools.lru_cache(maxsize=1)
def environment() -> ImmutableSandboxedEnvironment:
    """The one sandboxed Jinja environment all templates and card expressions are compiled in."""
    return make_environment(
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        autoescape=False,
    )


def _bounded_range(*args: int) -> range:
    """range() for templates, at most 10,000 items (with at most two nested loops: bounded work per row)."""
    for a in args:
        _check_width(a, "range() argument", 10**15)
    rng = range(*args)
    if len(rng) > 10_000:
        raise SecurityError("range() longer than 10,000 items is refused")
    return rng


# -- load-time checks ------------------------------------------------------------------------------

def check_tree(tree: nodes.Node) -> None:
    """Refuse deep nesting, long filter chains and deeply nested loops (iteratively: no recursion)."""
    stack = [(tree, 0, 0, 0)]
    while stack:
        node, depth, loops, chain = stack.pop()
        if depth > MAX_NESTING:
            raise SecurityError(f"expressions or statements nested deeper than {MAX_NESTING} levels are refused")
        loops += isinstance(node, nodes.For)
        if loops > MAX_LOOP_DEPTH:
            raise SecurityError(f"loops nested deeper than {MAX_LOOP_DEPTH} are refused")
        for child in node.iter_child_nodes():
            link = chain + 1 if isinstance(child, nodes.Filter) and isinstance(node, nodes.Filter) else 0
            if link >= MAX_FILTER_CHAIN:
                raise SecurityError(f"filter chains longer than {MAX_FILTER_CHAIN} are refused")
            stack.append((child, depth + 1, loops, link))


def _parse_guarded(parse_fn, source: str):
    if len(source) > MAX_STRING:
        raise SecurityError(f"template longer than {MAX_STRING} characters")
    try:
        tree = parse_fn(source)
    except RecursionError:
        raise SecurityError(f"expressions or statements nested deeper than {MAX_NESTING} levels are refused") from None
    check_tree(tree)
    return tree


def check_limits(source: str) -> None:
    """Refuse templates nested too deeply (loops, expressions, filter chains): bounded work per row."""
    parse(source)


@functools.lru_cache(maxsize=8192)
def parse(source: str):
    """A template's syntax tree, parsed once per process and checked against the structural limits."""
    return _parse_guarded(environment().parse, source)


@functools.lru_cache(maxsize=8192)
def parse_expression(source: str) -> nodes.Expr:
    """A card expression's syntax tree (TemplateSyntaxError if invalid, SecurityError if too deep)."""
    from jinja2.parser import Parser

    def parse_fn(src: str):
        parser = Parser(environment(), src, state="variable")
        expr = parser.parse_expression()
        if not parser.stream.current.test("eof"):
            raise jinja2.TemplateSyntaxError(f"unexpected {parser.stream.current.value!r}", parser.stream.current.lineno)
        return expr

    return _parse_guarded(parse_fn, source)


# Nodes that declare names (loops, assignments, macros, blocks, imports): only templates with one need
# Jinja's scope analysis to tell free variables from local ones.
_DECLARING = (nodes.For, nodes.Macro, nodes.CallBlock, nodes.FilterBlock, nodes.Scope, nodes.ScopedEvalContextModifier,
              nodes.With, nodes.Assign, nodes.AssignBlock, nodes.Block, nodes.Include, nodes.Import, nodes.FromImport,
              nodes.OverlayScope)


@functools.lru_cache(maxsize=8192)
def variables(source: str) -> frozenset[str]:
    """The free variables a template or expression refers to (for the field check).

    A template that declares no name (most catalog templates) reads only free variables: its loaded
    names that are not globals (Jinja's rule). Jinja's own analysis, kept for the rest, generates the
    template's code, which was a quarter of loading the catalog."""
    tree = parse(source)
    if next(tree.find_all(_DECLARING), None) is None:
        loaded = frozenset(n.name for n in tree.find_all(nodes.Name) if n.ctx == "load")
        return loaded - frozenset(environment().globals)
    return frozenset(jinja2.meta.find_undeclared_variables(tree))


# -- rendering ---------------------------------------------------------------------------------------

def render_limited(template, ctx: dict, limit: int) -> str:
    """Render under the resource policy, stopping as soon as the output passes ``limit`` characters.

    A template on the fast path (no statements, size-checked filters: bounded work) renders in one
    call and is checked once; anything else streams from Jinja under the per-render CPU budget.
    """
    fast = getattr(template, "fast", None)
    if fast is not None:
        try:
            text = fast(ctx)
        except Exception:  # noqa: BLE001 - FastPathMiss or a real error: Jinja gives the answer/message
            text = None
        if text is not None:
            if len(text) > limit:
                raise SecurityError(f"output longer than {limit} characters")
            return text
    jinja_template = getattr(template, "jinja", template)
    out, size = [], 0
    with time_budget():
        try:
            for chunk in jinja_template.generate(ctx):
                size += len(chunk)
                if size > limit:
                    raise SecurityError(f"output longer than {limit} characters")
                out.append(chunk)
        except RecursionError:
            raise SecurityError("recursion too deep") from None
        except MemoryError:
            raise SecurityError("out of memory while rendering") from None
    return "".join(out)


def evaluate_limited(compiled_expression, row: dict):
    """A compiled Jinja expression evaluated under the per-render CPU budget."""
    with time_budget():
        try:
            return compiled_expression(**row)
        except RecursionError:
            raise SecurityError("recursion too deep") from None
        except MemoryError:
            raise SecurityError("out of memory while evaluating") from None
