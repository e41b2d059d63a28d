"""Seeded option layouts (Flan Collection): how the answer options of a classification row are shown.

FLAN 2021 always shows ``OPTIONS:`` and one ``- option`` per line. The Flan Collection varies the
header, the itemisation and the ending, so a model does not learn to depend on one surface form.
A layout is chosen per example from (seed, task, example), and recorded per row in ``option_style``.
When a layout gives each option a unique label (A/B/C, 1/2/3, i/ii/iii), the target is the label.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

HEADERS = ("OPTIONS:", "Options:", "Choose from:", "Possible answers:", "Select from the following.",
           "Pick your answer from:", "Available choices:", "")
ENDINGS = ("", "Answer:", "The answer is:", "Your answer:")
_ROMAN = ("i", "ii", "iii", "iv", "v", "vi", "vii", "viii", "ix", "x", "xi", "xii", "xiii", "xiv", "xv",
          "xvi", "xvii", "xviii", "xix", "xx")


def _letters(n: int) -> list[str]:
    return [chr(ord("A") + i) if i < 26 else f"A{i}" for i in range(n)]


# item style -> (how a line looks, labels or None). Labelled styles make the label the target.
ITEM_STYLES = ("dash", "bullet", "letter_paren", "letter_dot", "number_dot", "number_paren", "roman", "inline")
_LABELLED = {"letter_paren", "letter_dot", "number_dot", "number_paren", "roman"}


def _labels(style: str, n: int) -> list[str] | None:
    if style.startswith("letter"):
        return _letters(n)
    if style.startswith("number"):
        return [str(i + 1) for i in range(n)]
    if style == "roman":
        return list(_ROMAN[:n]) if n <= len(_ROMAN) else [str(i + 1) for i in range(n)]
    return None


@dataclass(frozen=True)
class Layout:
    header: str
    items: str
    ending: str

    @functools.cached_property
    def name(self) -> str:
        """The per-row record: ``header|items|ending`` (empty parts shown as ``-``)."""
        return "|".join(p or "-" for p in (self.header, self.items, self.ending))

    def labels(self, n: int) -> list[str] | None:
        return _labels(self.items, n) if self.items in _LABELLED else None

    def render(self, options: list[str]) -> str:
        return _render(self, tuple(options))


@functools.lru_cache(maxsize=65536)
def _render(layout: Layout, options: tuple[str, ...]) -> str:
    """A layout applied to an option list (cached: most tasks show one option list on every row)."""
    labels = layout.labels(len(options))
    if layout.items == "inline":
        body = ", ".join(options)
        lines = [f"{layout.header} {body}" if layout.header else body]
    else:
        fmt = {"dash": "- {o}", "bullet": "* {o}", "letter_paren": "({l}) {o}", "letter_dot": "{l}. {o}",
               "number_dot": "{l}. {o}", "number_paren": "{l}) {o}", "roman": "{l}. {o}"}[layout.items]
        lines = ([layout.header] if layout.header else []) + [
            fmt.format(o=o, l=labels[i] if labels else "") for i, o in enumerate(options)]
    if layout.ending:
        lines.append(layout.ending)
    return "\n".join(lines)


FLAN = Layout("OPTIONS:", "dash", "")
ALL = tuple(Layout(h, s, e) for h in HEADERS for s in ITEM_STYLES for e in ENDINGS)
