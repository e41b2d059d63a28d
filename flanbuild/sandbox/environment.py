"""The one sandboxed Jinja environment every untrusted template and card expression runs in.

Templates, card expressions and third-party prompt collections are untrusted data, so they are
compiled by Jinja's ``ImmutableSandboxedEnvironment`` with ``StrictUndefined`` (no access to Python
internals, no mutation of the row, a misspelt field is an error), plus limits on the operations that
can allocate or loop without bound. Everything that renders untrusted Jinja goes through this module.
"""

from __future__ import annotations

import functools

import jinja2
import jinja2.meta
from jinja2.sandbox import ImmutableSandboxedEnvironment


def or_join(items, word: str = "or") -> str:
    """``["a", "b", "c"] | or_join`` -> ``"a, b or c"``: options written inline in a question."""
    items = [str(i) for i in items]
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} {word} {items[-1]}"


MAX_LOOP_DEPTH = 2  # nested {% for %} loops a template may have
MAX_SEQUENCE = 100_000  # longest string or list a template may build with * (and the range() limit)


class LimitedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, plus limits on the operators that can allocate without bound.

    ``'x' * 10**10`` or ``[0] * 10**10`` would take the machine's memory, and ``9 ** 9 ** 9`` its CPU;
    such operations are refused. Loop nesting is bounded when templates are loaded
    (``check_limits``), ``range`` is bounded by Jinja's sandbox, and output size when rendering.
    """

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context, operator, left, right):
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(times, int) and len(seq) * times > MAX_SEQUENCE:
                    raise jinja2.exceptions.SecurityError(f"'*' would build a sequence longer than {MAX_SEQUENCE}")
        if operator == "**" and isinstance(right, (int, float)) and abs(right) > 100:
            raise jinja2.exceptions.SecurityError("'**' with an exponent above 100 is refused")
        return super().call_binop(context, operator, left, right)


def check_limits(source: str) -> None:
    """Refuse templates whose loops nest deeper than MAX_LOOP_DEPTH (bounded work per row)."""
    from jinja2 import nodes

    def depth(node, level=0):
        here = level + isinstance(node, nodes.For)
        if here > MAX_LOOP_DEPTH:
            raise jinja2.exceptions.SecurityError(f"loops nested deeper than {MAX_LOOP_DEPTH} are refused")
        for child in node.iter_child_nodes():
            depth(child, here)

    depth(parse(source))


@functools.lru_cache(maxsize=1)
def environment() -> ImmutableSandboxedEnvironment:
    """The one sandboxed Jinja environment all templates and card expressions are compiled in."""
    env = LimitedSandbox(
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        autoescape=False,
    )
    env.filters["or_join"] = or_join
    env.globals["range"] = _bounded_range
    return env


def _bounded_range(*args: int) -> range:
    """range() for templates, at most 10,000 items (with at most two nested loops: bounded work per row)."""
    rng = range(*args)
    if len(rng) > 10_000:
        raise jinja2.exceptions.SecurityError("range() longer than 10,000 items is refused")
    return rng


def render_limited(template: jinja2.Template, ctx: dict, limit: int) -> str:
    """Render, stopping as soon as the output passes ``limit`` characters (a runaway template).

    Templates on the fast path have no loops and no ``*``: their output is bounded by the row's own
    size, so they render in one call and are checked once.
    """
    if getattr(template, "fast", None) is not None:
        text = template.render(ctx)
        if len(text) > limit:
            raise jinja2.exceptions.SecurityError(f"output longer than {limit} characters")
        return text
    out, size = [], 0
    for chunk in template.generate(ctx):
        size += len(chunk)
        if size > limit:
            raise jinja2.exceptions.SecurityError(f"output longer than {limit} characters")
        out.append(chunk)
    return "".join(out)


@functools.lru_cache(maxsize=8192)
def parse(source: str):
    """A template's syntax tree, parsed once per process (the linter, limits and field checks share it)."""
    return environment().parse(source)


@functools.lru_cache(maxsize=8192)
def variables(source: str) -> frozenset[str]:
    """The free variables a template or expression refers to (for the field check)."""
    return frozenset(jinja2.meta.find_undeclared_variables(parse(source)))


