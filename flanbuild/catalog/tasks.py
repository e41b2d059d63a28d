"""Tasks and clusters: what a task card says, and how one source row becomes a template context.

A task card (``tasks/<name>.yaml``) maps a source dataset into a task: which cluster it belongs to,
where its rows come from, which fields templates see, and what the answer (and, for classification,
the answer options) of a row is. Fields, answer, options and filter are Jinja *expressions* compiled
in the same sandbox as templates, so a card is declarative data that can still reshape a row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jinja2
import jinja2.parser

from flanbuild.catalog import schema
from flanbuild.errors import FlanbuildError
from flanbuild.catalog.templates import CONTEXT_NAMES, Template
from flanbuild.sandbox.environment import environment
from flanbuild.catalog.yamlio import LineDict, load_yaml, where

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_]*$")
SPLIT_ROLES = ("train", "eval")
METRICS = ("accuracy", "exact_match", "f1", "rouge", "bleu")
_CARD_KEYS = {
    "name", "cluster", "subcluster", "description", "homepage", "license", "source", "features",
    "fields", "filter", "type", "options", "answer", "metric", "examples",
}
_SOURCE_KEYS = {"hub", "config", "splits", "files", "revision", "manual"}
_REQUIRED = ("name", "cluster", "source", "fields", "type", "answer")


@dataclass(frozen=True)
class Cluster:
    """A group of tasks of one type; the unit that is held out for zero-shot evaluation."""

    name: str
    title: str = ""
    also_remove: tuple[str, ...] = ()  # clusters removed from training when this one is held out


@dataclass(frozen=True)
class Source:
    """Where a task's rows come from: a hub dataset, local files, or both (files win)."""

    hub: str | None = None
    config: str = "default"
    splits: dict[str, str] = field(default_factory=dict)  # role (train/eval) -> source split name
    files: dict[str, str] = field(default_factory=dict)  # role -> local Parquet/JSONL/CSV path
    revision: str | None = None
    manual: str | None = None  # how to get the data when the hub has no plain copy
    tables: dict[str, Any] = field(default_factory=dict)  # role -> in-memory pyarrow Table (Python API, NIv2)

    def split_name(self, role: str) -> str:
        """The source split behind a role (used in example ids)."""
        return self.splits.get(role, role)


@dataclass(frozen=True)
class Task:
    """A source dataset mapped into an instruction task, with its templates."""

    name: str
    cluster: str
    source: Source
    fields: dict[str, str]  # template field -> Jinja expression over a source row
    type: Literal["classification", "generation", "prompted"]  # prompted: the template renders the target
    answer: str
    templates: tuple[Template, ...] = ()
    options: tuple[str, ...] | str | None = None  # static list, per-row expression, or ClassLabel names
    filter: str | None = None
    features: schema.Features | None = None
    metric: str = ""
    subcluster: str | None = None
    description: str = ""
    homepage: str | None = None
    license: str | None = None
    examples: tuple[dict, ...] = ()
    origin: str = ""  # the card file, for error messages
    provider: str = "catalog"  # catalog | niv2 | promptsource: which submixtures can select the task

    def __post_init__(self) -> None:
        if not self.metric:
            object.__setattr__(self, "metric", "accuracy" if self.type == "classification" else "rouge")

    @property
    def is_classification(self) -> bool:
        return self.type == "classification"

    def template(self, template_id: int) -> Template:
        for t in self.templates:
            if t.id == template_id:
                return t
        raise FlanbuildError(f"task {self.name} has no template {template_id} (ids: {[t.id for t in self.templates]})")

    def static_options(self, features: schema.Features | None) -> list[str] | None:
        """The task-wide option list, or None when options come per row from an expression."""
        if isinstance(self.options, str):
            return None
        if self.options is not None:
            return list(self.options)
        names = schema.class_names(features, self.answer.strip())
        if names is None:
            raise FlanbuildError(
                f"task {self.name}: classification task has no options: give 'options' in the card "
                f"or make 'answer' a ClassLabel column",
                where=self.origin or None,
            )
        return names


def _check_expression(source: Any, what: str, loc: str) -> str:
    if not isinstance(source, str) or not source.strip():
        raise FlanbuildError(f"{what} must be a non-empty Jinja expression string", where=loc)
    try:  # parse only: compiling waits until a row needs the expression
        parser = jinja2.parser.Parser(environment(), source, state="variable")
        parser.parse_expression()
        if not parser.stream.current.test("eof"):
            raise jinja2.TemplateSyntaxError(f"unexpected {parser.stream.current.value!r}", parser.stream.current.lineno)
    except jinja2.TemplateSyntaxError as e:
        raise FlanbuildError(f"{what}: invalid expression {source!r}: {e.message}", where=loc) from None
    return source


def _parse_source(obj: Any, path: Path, doc: LineDict, catalog_dir: Path) -> Source:
    loc = where(path, doc, "source")
    if not isinstance(obj, dict):
        raise FlanbuildError("'source' must be a mapping (hub/config/splits or files)", where=loc)
    unknown = set(obj) - _SOURCE_KEYS
    if unknown:
        raise FlanbuildError(f"unknown source key(s) {sorted(unknown)} (allowed: {sorted(_SOURCE_KEYS)})", where=loc)
    if not obj.get("hub") and not obj.get("files"):
        raise FlanbuildError("source needs 'hub' (a Hugging Face dataset id) or 'files'", where=loc)
    splits = obj.get("splits") or ({} if obj.get("files") else None)
    if splits is None:
        raise FlanbuildError("a hub source needs 'splits' (e.g. {train: train, eval: validation})", where=loc)
    files = obj.get("files") or {}
    for name, mapping in (("splits", splits), ("files", files)):
        if not isinstance(mapping, dict) or set(mapping) - set(SPLIT_ROLES):
            raise FlanbuildError(f"source.{name} maps the roles train/eval to a name or path", where=loc)
    resolved = {}
    for role, rel in files.items():  # a card may only point inside its own catalog directory
        path = (catalog_dir / str(rel)).resolve()
        if Path(str(rel)).is_absolute() or not path.is_relative_to(catalog_dir.resolve()):
            raise FlanbuildError(f"source.files.{role} {rel!r} must be a relative path inside the catalog "
                                 f"directory {catalog_dir}", where=loc)
        resolved[role] = str(path)
    files = resolved
    config = obj.get("config", "default")
    return Source(
        hub=obj.get("hub"), config=str(config), splits={k: str(v) for k, v in splits.items()},
        files=files, revision=obj.get("revision"), manual=obj.get("manual"),
    )


def parse_card(doc: Any, path: Path, catalog_dir: Path, templates: tuple[Template, ...] = ()) -> Task:
    """Validate one task card; every problem is reported with file and line."""
    if not isinstance(doc, LineDict):
        raise FlanbuildError("a task card must be a YAML mapping", where=str(path))
    unknown = set(doc) - _CARD_KEYS
    if unknown:
        key = sorted(map(str, unknown))[0]
        raise FlanbuildError(f"unknown card key {key!r} (allowed: {', '.join(sorted(_CARD_KEYS))})", where=where(path, doc, key))
    for key in _REQUIRED:
        if doc.get(key) in (None, ""):
            raise FlanbuildError(f"task card needs '{key}'", where=where(path, doc))
    name = doc["name"]
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise FlanbuildError(f"task name {name!r} must match [a-z0-9_]+", where=where(path, doc, "name"))
    if name != path.stem:
        raise FlanbuildError(f"task name {name!r} must equal the file name ({path.stem})", where=where(path, doc, "name"))
    if doc["type"] not in ("classification", "generation"):
        raise FlanbuildError(f"task {name}: type must be classification or generation, got {doc['type']!r}",
                             where=where(path, doc, "type"))
    fields = doc["fields"]
    if not isinstance(fields, dict) or not fields:
        raise FlanbuildError(f"task {name}: 'fields' must map field names to expressions", where=where(path, doc, "fields"))
    for fname, expr in fields.items():
        loc = where(path, fields, fname)
        if not isinstance(fname, str) or not fname.isidentifier():
            raise FlanbuildError(f"task {name}: field name {fname!r} is not an identifier", where=loc)
        if fname in CONTEXT_NAMES:
            raise FlanbuildError(f"task {name}: field name {fname!r} is reserved ({', '.join(sorted(CONTEXT_NAMES))})", where=loc)
        _check_expression(expr, f"task {name}: field {fname!r}", loc)
    answer = _check_expression(doc["answer"], f"task {name}: answer", where(path, doc, "answer"))
    flt = doc.get("filter")
    if flt is not None:
        _check_expression(flt, f"task {name}: filter", where(path, doc, "filter"))
    options = doc.get("options")
    if doc["type"] == "generation" and options is not None:
        raise FlanbuildError(f"task {name}: a generation task has no options", where=where(path, doc, "options"))
    if isinstance(options, list):
        if not options or not all(isinstance(o, (str, int, float)) and str(o).strip() for o in options):
            raise FlanbuildError(f"task {name}: options must be a non-empty list of non-empty strings",
                                 where=where(path, doc, "options"))
        if len({str(o) for o in options}) != len(options):
            raise FlanbuildError(f"task {name}: options must be distinct", where=where(path, doc, "options"))
        options = tuple(str(o) for o in options)
    elif options is not None:
        options = _check_expression(options, f"task {name}: options", where(path, doc, "options"))
    metric = doc.get("metric", "")
    if metric and metric not in METRICS:
        raise FlanbuildError(f"task {name}: unknown metric {metric!r} (one of {', '.join(METRICS)})",
                             where=where(path, doc, "metric"))
    features = None
    if doc.get("features") is not None:
        features = schema.parse_features(doc["features"], where(path, doc, "features"))
    examples = doc.get("examples") or []
    if not isinstance(examples, list) or not all(isinstance(e, dict) for e in examples):
        raise FlanbuildError(f"task {name}: 'examples' must be a list of rows (mappings)", where=where(path, doc, "examples"))
    return Task(
        name=name, cluster=str(doc["cluster"]), source=_parse_source(doc["source"], path, doc, catalog_dir),
        fields={str(k): str(v) for k, v in fields.items()}, type=doc["type"], answer=answer,
        templates=templates, options=options, filter=flt, features=features, metric=metric,
        subcluster=doc.get("subcluster"), description=str(doc.get("description") or "").strip(),
        homepage=doc.get("homepage"), license=doc.get("license"),
        examples=tuple(_plain(e) for e in examples), origin=str(path),
    )


def _plain(obj: Any) -> Any:
    """LineDicts back to plain dicts (example rows must look like real rows)."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    return obj


def load_card(path: Path, catalog_dir: Path) -> Task:
    return parse_card(load_yaml(path), path, catalog_dir)


def parse_clusters(doc: Any, path: Path) -> list[Cluster]:
    """Read ``tasks/clusters.yaml``."""
    if not isinstance(doc, dict) or set(doc) != {"clusters"} or not isinstance(doc["clusters"], dict):
        raise FlanbuildError("clusters file must be a mapping with one key 'clusters'", where=str(path))
    out = []
    for name, spec in doc["clusters"].items():
        loc = where(path, doc["clusters"], name)
        spec = spec or {}
        if not isinstance(name, str) or not NAME_RE.match(name) or not isinstance(spec, dict):
            raise FlanbuildError(f"cluster {name!r}: needs a [a-z0-9_]+ name and a mapping", where=loc)
        unknown = set(spec) - {"title", "also_remove"}
        if unknown:
            raise FlanbuildError(f"cluster {name}: unknown key(s) {sorted(unknown)} (allowed: title, also_remove)", where=loc)
        also = spec.get("also_remove") or []
        if not isinstance(also, list):
            raise FlanbuildError(f"cluster {name}: also_remove must be a list of cluster names", where=loc)
        out.append(Cluster(name, str(spec.get("title") or name), tuple(map(str, also))))
    return out
