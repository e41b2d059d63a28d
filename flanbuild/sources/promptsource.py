"""promptsource-format templates (the P3 / T0 prompts) rendered in flanbuild's sandbox.

A promptsource ``templates.yaml`` holds Jinja templates whose rendered text is split on ``|||`` into
input and target, with an optional ``answer_choices`` expression. flanbuild renders them exactly as
promptsource's ``Template.apply`` does (variables truncated to 2,048 characters, ``|||`` inside the
data protected, parts stripped), with two differences: it runs in flanbuild's limited sandbox (the same resource limits as catalog
templates; the templates that build lists with ``.append``/``.update``/``.pop`` run in its mutable
variant, on copies of the row's lists and dicts), and the ``choice`` filter is seeded per (seed, task,
example, template) instead of using the global RNG. A template that cannot run here (a syntax error, a
refusal by the sandbox, no ``|||``) is skipped with its reason instead of failing the build.

Each ``<dataset>/<subset>/templates.yaml`` is attached to the catalog task with the same hub dataset
and config (``super_glue``/``rte`` -> ``aps/super_glue``, config ``rte``), which supplies the rows; the
result is a task ``p3_<dataset>_<subset>`` in that task's cluster, selected by ``source: promptsource``
submixtures.
"""

from __future__ import annotations

import copy
import functools
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import jinja2
import yaml
from jinja2.sandbox import ImmutableSandboxedEnvironment

from flanbuild.errors import FlanbuildError
from flanbuild.catalog.tasks import Task

TEXT_VAR_LENGTH = 2048
MAX_OUTPUT_CHARS = 1_000_000  # one rendered promptsource text (as for catalog templates)
PIPE_PROTECTOR = "3ed2dface8203c4c9dfb1a5dc58e41e0"
_RNG = "__flanbuild_choice_rng"


@jinja2.pass_context
def _choice(context, choices):
    return context[_RNG].choice(choices)


def _most_frequent(items):
    if not items:
        return None
    counts = Counter(items).most_common()
    return [c for c, n in counts if n == counts[0][1]]


@functools.lru_cache(maxsize=2)
def environment(mutable: bool = False) -> ImmutableSandboxedEnvironment:
    """promptsource's Jinja settings (default Undefined, no block trimming), in flanbuild's limited sandbox
    (the same resource policy as catalog templates; an unsafe attribute is an error, not an empty string).

    ``mutable``: the sandbox's variant that allows list/dict mutation methods (only given copies).
    """
    from flanbuild.sandbox.environment import make_environment, make_mutable_environment

    env = make_mutable_environment() if mutable else make_environment()
    env.globals["zip"] = zip
    env.filters["choice"] = _choice
    env.filters["most_frequent"] = _most_frequent
    env.filters["highlight"] = lambda s: s
    return env


@functools.lru_cache(maxsize=4096)
def _compile(source: str, mutable: bool = False) -> jinja2.Template:
    return environment(mutable).from_string(source)


#: Methods that change a list, dict or set in place; a template calling one renders in the mutable sandbox.
MUTATING = re.compile(r"\.\s*(append|extend|insert|pop|popitem|remove|clear|update|setdefault|sort|reverse|add|discard)\s*\(")

#: Columns of datasets whose promptsource templates were written against an older schema:
#: {dataset: {column the templates read: (column today, that column's ClassLabel names back then)}}.
#: trec: huggingface/datasets@02bb18c ``datasets/trec/trec.py`` had ``label-coarse``/``label-fine`` (promptsource
#: reads them as ``label_coarse``/``label_fine``: ``promptsource/utils.py`` renames ``-`` to ``_``) with these
#: label orders; today's CogComp/trec has ``coarse_label``/``fine_label`` (``ABBR:abb``...), mapped by name.
TREC_COARSE_V1 = ("DESC", "ENTY", "ABBR", "HUM", "NUM", "LOC")
TREC_FINE_V1 = (
    "manner", "cremat", "animal", "exp", "ind", "gr", "title", "def", "date", "reason", "event", "state", "desc",
    "count", "other", "letter", "religion", "food", "country", "color", "termeq", "city", "body", "dismed", "mount",
    "money", "product", "period", "substance", "sport", "plant", "techmeth", "volsize", "instru", "abb", "speed",
    "word", "lang", "perc", "code", "dist", "temp", "symbol", "ord", "veh", "weight", "currency",
)
COLUMN_DRIFT: dict[str, dict[str, tuple[str, tuple[str, ...] | None]]] = {
    "trec": {"label_coarse": ("coarse_label", TREC_COARSE_V1), "label_fine": ("fine_label", TREC_FINE_V1)},
}


def drift_columns(dataset: str, features: dict) -> tuple[tuple[str, str, tuple[int, ...] | None], ...]:
    """(old column, current column, current label -> old label index) for a dataset's schema drift.

    Labels are matched by name (``LOC:city`` -> ``city``); a current label with no old name maps to -1.
    """
    out = []
    for old, (new, old_names) in COLUMN_DRIFT.get(dataset, {}).items():
        if new not in features:
            continue
        mapping = None
        names = (features[new] or {}).get("class_label") if isinstance(features[new], dict) else None
        if old_names is not None and names:
            index = {n: i for i, n in enumerate(old_names)}
            mapping = tuple(index.get(n, index.get(str(n).split(":", 1)[-1], -1)) for n in names)
        out.append((old, new, mapping))
    return tuple(out)


def _local_row(example: dict, drift, mutable: bool) -> dict:
    """The row as the template sees it: old column names restored, hyphens as promptsource renames them,
    and (for a mutating template) its own copies of lists and dicts, so nothing it changes outlives the render."""
    row = dict(example)
    for key in [k for k in row if "-" in k]:
        row.setdefault(key.replace("-", "_"), row[key])
    for old, new, mapping in drift:
        value = row.get(new)
        row[old] = mapping[value] if mapping is not None and isinstance(value, int) and 0 <= value < len(mapping) else value
    if mutable:
        row = {k: copy.deepcopy(v) if isinstance(v, (list, dict, set)) else v for k, v in row.items()}
    return row


def _protect(example: dict) -> dict:
    return {k: v.replace("|||", PIPE_PROTECTOR) if isinstance(v, str) else v for k, v in example.items()}


@dataclass(frozen=True)
class PromptsourceTemplate:
    """One promptsource template; renders its own input, target and answer choices from a raw row."""

    id: int
    name: str
    jinja: str
    answer_choices: str | None = None
    choices_in_prompt: bool = False
    origin: str = ""
    inverted: bool = False
    original_task: bool | None = None  # promptsource metadata: does it phrase the dataset's original task
    metrics: tuple[str, ...] = ()  # promptsource metadata: the metrics it is meant to be scored with
    drift: tuple = ()  # (old column, current column, label mapping) for schema drift, see COLUMN_DRIFT

    @property
    def mutates(self) -> bool:
        """Whether the template changes lists or dicts in place (renders in the mutable sandbox)."""
        return bool(MUTATING.search(self.jinja) or (self.answer_choices and MUTATING.search(self.answer_choices)))

    @property
    def info(self) -> dict:
        """The template's promptsource metadata, as mixture.json records it."""
        return {"name": self.name, "original_task": self.original_task, "choices_in_prompt": self.choices_in_prompt,
                "metrics": list(self.metrics)}

    @property
    def shows_options(self) -> bool:
        return self.choices_in_prompt

    def names(self) -> set[str]:
        return set()

    def apply(self, example: dict, rng: random.Random) -> tuple[str, str, list[str]]:
        """(input, target, answer choices) exactly as promptsource renders them, ``choice`` seeded."""
        mutable = self.mutates
        row = _local_row(example, self.drift, mutable)
        protected = _protect(row)
        if "answer_choices" in protected:
            raise FlanbuildError(f"template {self.name!r}: the row has a column named 'answer_choices'", where=self.origin)
        from flanbuild.sandbox.environment import render_limited

        choices = None
        if self.answer_choices is not None:
            rendered = render_limited(_compile(self.answer_choices, mutable), {**protected, _RNG: rng}, MAX_OUTPUT_CHARS)
            choices = [c.strip().replace(PIPE_PROTECTOR, "|||") for c in rendered.split("|||")]
        body = self.jinja.replace("}}", f" | string | truncate({TEXT_VAR_LENGTH}) }}}}")
        text = render_limited(_compile(body, mutable), {**protected, "answer_choices": choices, _RNG: rng}, MAX_OUTPUT_CHARS)
        parts = [p.replace(PIPE_PROTECTOR, "|||").strip() for p in text.split("|||")]
        return parts[0], parts[1] if len(parts) > 1 else "", choices or []


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_constructor("!Template", lambda loader, node: loader.construct_mapping(node, deep=True))
_Loader.add_constructor("!TemplateMetadata", lambda loader, node: loader.construct_mapping(node, deep=True))


@dataclass(frozen=True)
class PromptsourceFile:
    """One ``templates.yaml``: its dataset and subset, the templates that run here, and those skipped (with why)."""

    path: Path
    dataset: str
    subset: str | None
    templates: tuple[PromptsourceTemplate, ...]
    skipped: tuple[tuple[str, str], ...] = ()  # (template name, reason)


def read_templates_file(path: Path) -> PromptsourceFile:
    """A promptsource ``templates.yaml``; a template that cannot run here is listed in ``skipped``, not raised.

    A file that is not a promptsource templates file at all raises FlanbuildError.
    """
    try:
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
        dataset, subset = doc["dataset"], doc.get("subset")
        entries = list(doc["templates"].values())
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError, AttributeError) as e:
        raise FlanbuildError(f"not a promptsource templates file: {' '.join(str(e).split())[:200]}", where=str(path)) from None
    templates, skipped = [], []
    for n, entry in enumerate(entries, 1):
        name = str(entry.get("name", n)) if isinstance(entry, dict) else str(n)
        try:
            templates.append(_template(entry, n, path))
        except FlanbuildError as e:
            skipped.append((name, str(e).removeprefix(f"{path}: ")))
    return PromptsourceFile(path, str(dataset), None if subset is None else str(subset), tuple(templates), tuple(skipped))


def _template(entry, n: int, path: Path) -> PromptsourceTemplate:
    """One template entry, checked: a 'jinja' string with '|||', valid Jinja the sandbox accepts."""
    jinja_src = entry.get("jinja") if isinstance(entry, dict) else None
    if not isinstance(jinja_src, str) or "|||" not in jinja_src:
        raise FlanbuildError(f"template {n}: needs a 'jinja' string with '|||' between input and target", where=str(path))
    meta = entry.get("metadata") or {}
    meta = meta if isinstance(meta, dict) else {}
    name = str(entry.get("name", n))
    mutable = bool(MUTATING.search(jinja_src) or MUTATING.search(str(entry.get("answer_choices") or "")))
    try:
        from flanbuild.sandbox.environment import check_tree

        check_tree(_compile(jinja_src, mutable).environment.parse(jinja_src))
        if entry.get("answer_choices") is not None:
            _compile(str(entry["answer_choices"]), mutable)
    except jinja2.TemplateSyntaxError as e:
        raise FlanbuildError(f"template {name!r}: Jinja syntax error: {e.message}", where=str(path)) from None
    except (jinja2.exceptions.SecurityError, RecursionError) as e:
        raise FlanbuildError(f"template {name!r}: refused by the sandbox: "
                             f"{e if isinstance(e, jinja2.exceptions.SecurityError) else 'nested too deeply'}",
                             where=str(path)) from None
    metrics = meta.get("metrics") or ()
    original = meta.get("original_task")
    return PromptsourceTemplate(
        id=n, name=name, jinja=jinja_src,
        answer_choices=None if entry.get("answer_choices") is None else str(entry["answer_choices"]),
        choices_in_prompt=bool(meta.get("choices_in_prompt")), origin=f"{path} ({name})",
        original_task=None if original is None else bool(original),
        metrics=tuple(str(m) for m in metrics) if isinstance(metrics, (list, tuple)) else (str(metrics),),
    )


def load_templates_yaml(path: Path) -> tuple[str, str | None, list[PromptsourceTemplate]]:
    """(dataset, subset, templates) from one promptsource ``templates.yaml``; the first unusable template raises."""
    f = read_templates_file(path)
    if f.skipped:
        raise FlanbuildError(f.skipped[0][1], where=str(path))
    return f.dataset, f.subset, list(f.templates)


#: promptsource subsets the catalog reads under another config name. super_glue's ``wsc.fixed`` is ``wsc``
#: with corrected span indices (same rows, same columns); the catalog's super_glue_wsc card reads ``wsc``.
CONFIG_ALIASES = {"wsc.fixed": "wsc"}
#: The names a Hub dataset with one unnamed config gives it: promptsource writes ``subset: null``.
DEFAULT_CONFIGS = ("default", "plain_text")


def _attachment(task: Task, dataset: str, subset: str | None) -> str | None:
    """How a promptsource file attaches to a catalog card: "train", "eval-only", or None (it does not).

    * subset None matches the dataset's one config, whatever the Hub calls it (``default``, ``plain_text``,
      or the dataset's own name, as ``nq_open``);
    * ``wsc.fixed`` matches ``wsc`` (CONFIG_ALIASES);
    * ``<config>_<suffix>`` matches a card of ``<config>`` evaluating on ``validation_<suffix>``
      (glue ``mnli_matched``/``mnli_mismatched``: Hub configs with only validation/test rows, so eval-only).
    """
    src = task.source
    if task.provider != "catalog" or not src.hub or not (src.hub == dataset or src.hub.endswith("/" + dataset)):
        return None
    if subset is None:
        return "train" if src.config in (*DEFAULT_CONFIGS, dataset.rsplit("/", 1)[-1]) else None
    if src.config in (subset, CONFIG_ALIASES.get(subset)):
        return "train"
    prefix = src.config + "_"
    if subset.startswith(prefix) and src.base_split("eval") == "validation_" + subset[len(prefix):]:
        return "eval-only"
    return None


def _task_name(dataset: str, subset: str | None, card: Task, several: bool) -> str:
    name = "p3_" + re.sub(r"[^a-z0-9_]+", "_", f"{dataset}_{subset or ''}".lower()).strip("_")
    if several:  # one file, several cards (anli: one file for rounds r1-r3): one task per card
        stem = re.sub(r"[^a-z0-9_]+", "_", dataset.rsplit("/", 1)[-1].lower())
        name = f"p3_{card.name}" if card.name.startswith(stem) else f"{name}_{card.name}"
    return name


def load_promptsource(root: Path | str, catalog: dict[str, Task]) -> tuple[list[Task], dict[str, str]]:
    """Tasks for every ``templates.yaml`` under ``root``; also returns {file or template: why skipped}.

    A file attaches to every catalog card that reads its dataset and config (see _attachment), making one
    task per card. Templates that cannot run here are left out, each with its reason.
    """
    from dataclasses import replace

    root = Path(root)
    files = sorted(root.rglob("templates.yaml"))
    if not files:
        raise FlanbuildError(f"no promptsource templates.yaml files under {root}")
    tasks, skipped = [], {}
    for path in files:
        f = read_templates_file(path)
        cards, seen = [], set()
        for _, t in sorted(catalog.items()):  # cards reading the same train rows (mnli_matched/_mismatched) count once
            how = _attachment(t, f.dataset, f.subset)
            rows = (how, t.source.base_split("train") if how == "train" else t.name)
            if how and rows not in seen:
                seen.add(rows)
                cards.append((t, how))
        if not cards:
            skipped[str(path)] = f"no catalog task reads {f.dataset}/{f.subset or 'default'}"
            continue
        for card, how in cards:
            name = _task_name(f.dataset, f.subset, card, len(cards) > 1)
            for template_name, reason in f.skipped:
                skipped[f"{name} template {template_name!r}"] = reason
            if not f.templates:
                skipped[name] = f"none of the {len(f.skipped)} templates of {path} can run"
                continue
            drift = drift_columns(f.dataset.rsplit("/", 1)[-1], card.features or {})
            templates = tuple(replace(t, drift=drift) for t in f.templates) if drift else f.templates
            if how == "eval-only":
                skipped[name] = (f"attached to {card.name}, but the Hub's {f.dataset}/{f.subset} config has only "
                                 f"validation and test rows and promptsource tasks are training-only")
                continue
            tasks.append(replace(card, name=name, provider="promptsource", type="prompted", answer="''",
                                 options=None, filter=card.filter, fields={c: c for c in card.features or {}},
                                 templates=templates, metric="accuracy" if templates[0].answer_choices else "rouge",
                                 description=f"promptsource templates for {f.dataset}/{f.subset or 'default'} ({path})",
                                 origin=str(path), examples=(), duplicates=()))
    return tasks, skipped
