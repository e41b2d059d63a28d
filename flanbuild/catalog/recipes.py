"""Mixture recipes: YAML files under ``mixtures/`` that say how a mixture is composed and phrased.

A recipe names submixtures (each a slice of the available tasks with a weight and caps, like the Flan
Collection's Flan2021 / T0 / NIv2 / CoT), the prompt style of training rows (zero- vs few-shot, with
vs without options, seeded option layouts, how often inverted templates are used) and decontamination.
``flan2021`` (the FLAN paper's recipe) is the default; ``flan2022`` is the Flan Collection's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flanbuild.errors import FlanbuildError
from flanbuild.catalog.yamlio import load_yaml, where


@dataclass(frozen=True)
class Submixture:
    """A weighted slice of the tasks, mixed examples-proportionally inside with its own caps."""

    name: str
    weight: float = 1.0
    task_cap: int = 30_000
    rate_cap: int = 0  # mixing-rate cap; 0 = the task cap is the only cap
    clusters: tuple[str, ...] = ()  # only these clusters (empty = any)
    exclude_clusters: tuple[str, ...] = ()
    tasks: tuple[str, ...] = ()  # only these tasks (empty = any)
    exclude_tasks: tuple[str, ...] = ()  # never these (e.g. the second copy of a dataset)
    source: str = "catalog"  # catalog | niv2 | promptsource

    def selects(self, task_name: str, cluster: str, source: str) -> bool:
        return (source == self.source and (not self.clusters or cluster in self.clusters)
                and cluster not in self.exclude_clusters and (not self.tasks or task_name in self.tasks)
                and task_name not in self.exclude_tasks)


@dataclass(frozen=True)
class PromptStyle:
    """How training rows are phrased. The defaults are FLAN 2021's: zero-shot, options always shown."""

    few_shot: float = 0.0  # share of rows rendered few-shot (fs_*)
    options: float = 1.0  # share of option-showing rows rendered with the options (*_opt)
    option_layouts: bool = False  # seeded option layouts instead of FLAN's "OPTIONS:" + dashes
    inverted_weight: float | None = None  # inverted templates' weight vs 1.0 for the others (None: uniform)
    k: tuple[int, ...] = (1, 2, 5)  # few-shot exemplar counts; one is drawn per row
    few_shot_mode: str = "same"  # same: exemplars use the query's template; mixed: any of the task's
    example_separator: str = "\n\n"  # between exemplars and before the query
    target_separator: str = "\n"  # between an exemplar's input and its target
    max_input_tokens: int = 2048  # few-shot inputs are pruned (farthest exemplar first) to fit
    tokenizer: str | None = None  # count tokens with this transformers tokenizer; else chars / 4

    def __post_init__(self) -> None:
        for name in ("few_shot", "options"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise FlanbuildError(f"prompt.{name} must be between 0 and 1, got {value}")
        if self.inverted_weight is not None and self.inverted_weight < 0:
            raise FlanbuildError(f"prompt.inverted_weight must be >= 0, got {self.inverted_weight}")
        if not self.k or any(not isinstance(k, int) or k < 1 for k in self.k):
            raise FlanbuildError(f"prompt.k must be a positive integer or a list of them, got {self.k}")
        if self.few_shot_mode not in ("same", "mixed"):
            raise FlanbuildError(f"prompt.few_shot_mode must be 'same' or 'mixed', got {self.few_shot_mode!r}")
        if self.max_input_tokens < 16:
            raise FlanbuildError(f"prompt.max_input_tokens must be >= 16, got {self.max_input_tokens}")


@dataclass(frozen=True)
class Recipe:
    name: str = "flan2021"
    description: str = ""
    submixtures: tuple[Submixture, ...] = (
        Submixture("flan2021", rate_cap=3_000, exclude_clusters=("chain_of_thought", "dialog")),)
    prompt: PromptStyle = field(default_factory=PromptStyle)
    heldout: tuple[str, ...] = ("nli",)
    decontaminate_ngram: int = 0  # also drop train rows sharing an n-gram with eval source text (0 = off)
    origin: str = ""


def builtin_mixtures_dir() -> Path:
    from flanbuild.catalog.registry import builtin_catalog_dir

    return builtin_catalog_dir() / "mixtures"


def available() -> list[str]:
    return sorted(p.stem for p in builtin_mixtures_dir().glob("*.yaml"))


def load_recipe(name_or_file: str) -> Recipe:
    """A shipped recipe by name (``flan2021``) or a YAML file path."""
    path = Path(name_or_file)
    if not path.suffix:
        path = builtin_mixtures_dir() / f"{name_or_file}.yaml"
        if not path.is_file():
            raise FlanbuildError(f"unknown mixture {name_or_file!r} (shipped: {', '.join(available())}; or give a YAML file)")
    elif not path.is_file():
        raise FlanbuildError(f"mixture file {path} does not exist")
    return parse_recipe(load_yaml(path), path)  # load_yaml: regular files of bounded size, no aliases


_RECIPE_KEYS = {"name", "description", "submixtures", "prompt", "heldout", "decontaminate"}
_SUB_KEYS = {"name", "weight", "task_cap", "rate_cap", "clusters", "exclude_clusters", "tasks", "exclude_tasks", "source"}


def _check_keys(obj: Any, allowed: set[str], what: str, loc: str) -> dict:
    if not isinstance(obj, dict):
        raise FlanbuildError(f"{what} must be a mapping", where=loc)
    unknown = set(obj) - allowed
    if unknown:
        raise FlanbuildError(f"unknown {what} key(s) {sorted(map(str, unknown))} (allowed: {', '.join(sorted(allowed))})", where=loc)
    return obj


_MAX_COUNT = 10**9
#: The type of every recipe field: (kind, minimum, maximum). Checked before anything is converted, so a
#: wrong type is a file:line error (``task_cap: .inf``, ``ngram: "x"``, ``heldout: 3``), never a traceback
#: or a silently stringified value.
_FIELD_TYPES = {
    "recipe": {"name": ("str",), "description": ("str",), "heldout": ("names",), "submixtures": ("list",),
               "prompt": ("map",), "decontaminate": ("map",)},
    "submixture": {"name": ("str",), "weight": ("number", 0, 1e6), "task_cap": ("int", 0, _MAX_COUNT),
                   "rate_cap": ("int", 0, _MAX_COUNT), "clusters": ("names",), "exclude_clusters": ("names",),
                   "tasks": ("names",), "exclude_tasks": ("names",), "source": ("str",)},
    "prompt": {"few_shot": ("number", 0, 1), "options": ("number", 0, 1), "option_layouts": ("bool",),
               "inverted_weight": ("number?", 0, 1e6), "k": ("ints", 1, 1000), "few_shot_mode": ("str",),
               "example_separator": ("str",), "target_separator": ("str",),
               "max_input_tokens": ("int", 16, 10**7), "tokenizer": ("str?",)},
    "decontaminate": {"ngram": ("int", 0, 1000)},
}


def _is_int(v: Any, lo: float, hi: float) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _is_number(v: Any, lo: float, hi: float) -> bool:
    import math

    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and lo <= v <= hi


#: kind -> (check(value, minimum, maximum), what the value must be)
_KINDS = {
    "str": (lambda v, lo, hi: isinstance(v, str), "a string"),
    "bool": (lambda v, lo, hi: isinstance(v, bool), "true or false"),
    "names": (lambda v, lo, hi: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of names"),
    "list": (lambda v, lo, hi: isinstance(v, list), "a list"),
    "map": (lambda v, lo, hi: isinstance(v, dict), "a mapping"),
    "int": (_is_int, "an integer between {lo} and {hi}"),
    "number": (_is_number, "a number between {lo} and {hi}"),
    "ints": (lambda v, lo, hi: bool(v if isinstance(v, list) else [v])
             and all(_is_int(x, lo, hi) for x in (v if isinstance(v, list) else [v])),
             "an integer between {lo} and {hi} or a non-empty list of them"),
}


def _type_error(kind: tuple, value: Any) -> str | None:
    """Why ``value`` is not of ``kind`` (None when it is)."""
    if kind[0].endswith("?") and value is None:
        return None
    check, what = _KINDS[kind[0].rstrip("?")]
    lo, hi = (kind[1], kind[2]) if len(kind) == 3 else (None, None)
    return None if check(value, lo, hi) else what.format(lo=lo, hi=hi)


def check_recipe_types(doc: Any, path: Path) -> None:
    """Every recipe field has its type (see _FIELD_TYPES); errors name the file and line."""
    def check(mapping: Any, what: str) -> None:
        if not isinstance(mapping, dict):
            return
        for key, kind in _FIELD_TYPES[what].items():
            if key in mapping and not (mapping[key] is None and key in ("description", "prompt", "decontaminate",
                                                                        "heldout", "submixtures")):
                problem = _type_error(kind, mapping[key])
                if problem:
                    label = f"{what}." if what != "recipe" else ""
                    raise FlanbuildError(f"{label}{key} must be {problem}, got {mapping[key]!r}"[:300],
                                         where=where(path, mapping, key))

    check(doc, "recipe")
    if isinstance(doc, dict):
        for entry in doc.get("submixtures") or []:
            check(entry, "submixture")
        check(doc.get("prompt"), "prompt")
        check(doc.get("decontaminate"), "decontaminate")


def parse_recipe(doc: Any, path: Path) -> Recipe:
    doc = _check_keys(doc, _RECIPE_KEYS, "mixture", str(path))
    check_recipe_types(doc, path)
    name = doc.get("name") or path.stem
    subs = [_parse_submixture(entry, path) for entry in doc.get("submixtures") or []]
    if not subs:
        raise FlanbuildError("a mixture needs at least one submixture", where=str(path))
    if len({s.name for s in subs}) != len(subs):
        raise FlanbuildError("submixture names must be unique", where=str(path))
    decon = _check_keys(doc.get("decontaminate") or {}, {"ngram"}, "decontaminate", where(path, doc, "decontaminate"))
    heldout = doc.get("heldout") or ["nli"]
    return Recipe(name=str(name), description=str(doc.get("description") or "").strip(), submixtures=tuple(subs),
                  prompt=_parse_prompt(doc, path), heldout=tuple(heldout),
                  decontaminate_ngram=int(decon.get("ngram", 0)), origin=str(path))


def _parse_submixture(entry: Any, path: Path) -> Submixture:
    loc = where(path, entry)
    entry = _check_keys(entry, _SUB_KEYS, "submixture", loc)
    if not entry.get("name"):
        raise FlanbuildError("each submixture needs a 'name'", where=loc)
    try:
        sub = Submixture(
            name=str(entry["name"]), weight=float(entry.get("weight", 1.0)),
            task_cap=int(entry.get("task_cap", 30_000)), rate_cap=int(entry.get("rate_cap", 0)),
            clusters=tuple(entry.get("clusters") or ()), exclude_clusters=tuple(entry.get("exclude_clusters") or ()),
            tasks=tuple(entry.get("tasks") or ()), exclude_tasks=tuple(entry.get("exclude_tasks") or ()),
            source=str(entry.get("source", "catalog")),
        )
    except (TypeError, ValueError) as e:
        raise FlanbuildError(f"submixture {entry['name']}: {e}", where=loc) from None
    if not sub.weight > 0:
        raise FlanbuildError(f"submixture {sub.name}: weight must be > 0, got {sub.weight}", where=loc)
    if sub.task_cap < 0 or sub.rate_cap < 0:
        raise FlanbuildError(f"submixture {sub.name}: caps must be >= 0 (0 = no cap)", where=loc)
    if sub.source not in ("catalog", "niv2", "promptsource"):
        raise FlanbuildError(f"submixture {sub.name}: source must be catalog, niv2 or promptsource", where=loc)
    return sub


def _parse_prompt(doc: dict, path: Path) -> PromptStyle:
    loc = where(path, doc, "prompt")
    prompt = _check_keys(doc.get("prompt") or {}, set(PromptStyle.__dataclass_fields__), "prompt", loc)
    if "k" in prompt and not isinstance(prompt["k"], list):
        prompt = {**prompt, "k": [prompt["k"]]}
    try:
        return PromptStyle(**{k: tuple(v) if k == "k" else v for k, v in prompt.items()})
    except TypeError as e:
        raise FlanbuildError(f"prompt: {e}", where=loc) from None
    except FlanbuildError as e:
        raise FlanbuildError(str(e), where=loc) from None
