"""promptsource-format templates (the P3 / T0 prompts) rendered in flanbuild's sandbox.

A promptsource ``templates.yaml`` holds Jinja templates whose rendered text is split on ``|||`` into
input and target, with an optional ``answer_choices`` expression. flanbuild renders them exactly as
promptsource's ``Template.apply`` does (variables truncated to 2,048 characters, ``|||`` inside the
data protected, parts stripped), with two differences: it runs in Jinja's immutable sandbox, and the
``choice`` filter is seeded per (seed, task, example, template) instead of using the global RNG.

Each ``<dataset>/<subset>/templates.yaml`` is attached to the catalog task with the same hub dataset
and config (``super_glue``/``rte`` -> ``aps/super_glue``, config ``rte``), which supplies the rows; the
result is a task ``p3_<dataset>_<subset>`` in that task's cluster, selected by ``source: promptsource``
submixtures.
"""

from __future__ import annotations

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


@functools.lru_cache(maxsize=1)
def environment() -> ImmutableSandboxedEnvironment:
    """promptsource's Jinja settings (default Undefined, no block trimming), in flanbuild's limited sandbox
    (the same resource policy as catalog templates; an unsafe attribute is an error, not an empty string)."""
    from flanbuild.sandbox.environment import make_environment

    env = make_environment()
    env.globals["zip"] = zip
    env.filters["choice"] = _choice
    env.filters["most_frequent"] = _most_frequent
    env.filters["highlight"] = lambda s: s
    return env


@functools.lru_cache(maxsize=4096)
def _compile(source: str) -> jinja2.Template:
    return environment().from_string(source)


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

    @property
    def shows_options(self) -> bool:
        return self.choices_in_prompt

    def names(self) -> set[str]:
        return set()

    def apply(self, example: dict, rng: random.Random) -> tuple[str, str, list[str]]:
        """(input, target, answer choices) exactly as promptsource renders them, ``choice`` seeded."""
        protected = _protect(example)
        if "answer_choices" in protected:
            raise FlanbuildError(f"template {self.name!r}: the row has a column named 'answer_choices'", where=self.origin)
        from flanbuild.sandbox.environment import render_limited

        choices = None
        if self.answer_choices is not None:
            rendered = render_limited(_compile(self.answer_choices), {**protected, _RNG: rng}, MAX_OUTPUT_CHARS)
            choices = [c.strip().replace(PIPE_PROTECTOR, "|||") for c in rendered.split("|||")]
        body = self.jinja.replace("}}", f" | string | truncate({TEXT_VAR_LENGTH}) }}}}")
        text = render_limited(_compile(body), {**protected, "answer_choices": choices, _RNG: rng}, MAX_OUTPUT_CHARS)
        parts = [p.replace(PIPE_PROTECTOR, "|||").strip() for p in text.split("|||")]
        return parts[0], parts[1] if len(parts) > 1 else "", choices or []


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_constructor("!Template", lambda loader, node: loader.construct_mapping(node, deep=True))
_Loader.add_constructor("!TemplateMetadata", lambda loader, node: loader.construct_mapping(node, deep=True))


def load_templates_yaml(path: Path) -> tuple[str, str | None, list[PromptsourceTemplate]]:
    """(dataset, subset, templates) from one promptsource ``templates.yaml``."""
    try:
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
        dataset, subset = doc["dataset"], doc.get("subset")
        entries = list(doc["templates"].values())
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError, AttributeError) as e:
        raise FlanbuildError(f"not a promptsource templates file: {' '.join(str(e).split())[:200]}", where=str(path)) from None
    templates = []
    for n, entry in enumerate(entries, 1):
        jinja_src = entry.get("jinja") if isinstance(entry, dict) else None
        if not isinstance(jinja_src, str) or "|||" not in jinja_src:
            raise FlanbuildError(f"template {n}: needs a 'jinja' string with '|||' between input and target", where=str(path))
        meta = entry.get("metadata") or {}
        try:
            from flanbuild.sandbox.environment import check_tree

            check_tree(_compile(jinja_src).environment.parse(jinja_src))
            if entry.get("answer_choices") is not None:
                _compile(str(entry["answer_choices"]))
        except jinja2.TemplateSyntaxError as e:
            raise FlanbuildError(f"template {entry.get('name', n)!r}: Jinja syntax error: {e.message}", where=str(path)) from None
        except (jinja2.exceptions.SecurityError, RecursionError) as e:
            raise FlanbuildError(f"template {entry.get('name', n)!r}: refused by the sandbox: "
                                 f"{e if isinstance(e, jinja2.exceptions.SecurityError) else 'nested too deeply'}",
                                 where=str(path)) from None
        templates.append(PromptsourceTemplate(
            id=n, name=str(entry.get("name", n)), jinja=jinja_src,
            answer_choices=None if entry.get("answer_choices") is None else str(entry["answer_choices"]),
            choices_in_prompt=bool(meta.get("choices_in_prompt")), origin=f"{path} ({entry.get('name', n)})",
        ))
    return str(dataset), None if subset is None else str(subset), templates


def load_promptsource(root: Path | str, catalog: dict[str, Task]) -> tuple[list[Task], dict[str, str]]:
    """Tasks for every ``templates.yaml`` under ``root``; also returns {file: reason} for unmatched ones."""
    from dataclasses import replace

    root = Path(root)
    files = sorted(root.rglob("templates.yaml"))
    if not files:
        raise FlanbuildError(f"no promptsource templates.yaml files under {root}")
    tasks, unmatched = [], {}
    for path in files:
        dataset, subset, templates = load_templates_yaml(path)
        config = subset or "default"
        base = next((t for _, t in sorted(catalog.items()) if t.provider == "catalog" and t.source.hub
                     and (t.source.hub == dataset or t.source.hub.endswith("/" + dataset)) and t.source.config == config), None)
        if base is None:
            unmatched[str(path)] = f"no catalog task reads {dataset}/{config}"
            continue
        name = "p3_" + re.sub(r"[^a-z0-9_]+", "_", f"{dataset}_{subset or ''}".lower()).strip("_")
        columns = list(base.features or {})
        tasks.append(replace(base, name=name, provider="promptsource", type="prompted", answer="''",
                             options=None, filter=base.filter, fields={c: c for c in columns},
                             templates=tuple(templates), metric="accuracy" if templates[0].answer_choices else "rouge",
                             description=f"promptsource templates for {dataset}/{config} ({path})", origin=str(path),
                             examples=()))
    return tasks, unmatched
