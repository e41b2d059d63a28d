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
from flanbuild.sandbox.environment import parse_expression
from flanbuild.catalog.untrusted import check_card_types
from flanbuild.catalog.yamlio import LineDict, load_yaml, where

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_]*$")
SPLIT_ROLES = ("train", "eval")
METRICS = ("accuracy", "exact_match", "f1", "rouge", "bleu")
_CARD_KEYS = {
    "name", "cluster", "subcluster", "description", "homepage", "license", "source", "features",
    "fields", "filter", "type", "options", "answer", "metric", "examples", "duplicates", "nulls", "override",
}
_SOURCE_KEYS = {"hub", "config", "splits", "files", "revision", "manual", "mirror_id", "max_rows"}
_CARVE_KEYS = {"from", "last"}
# A source split name, optionally with a slice in TFDS/FLAN notation: "train", "train[-1000:]" (the last
# 1000 rows), "train[:-1000]" (all but the last 1000 rows).
SLICE_RE = re.compile(r"^(?P<name>[^\[\]]+?)(?:\[(?:(?P<last>-\d+):|:(?P<head>-\d+))\])?$")


def parse_slice(split: str) -> tuple[str, int | None, int | None]:
    """``name[-N:]`` -> (name, -N, None); ``name[:-N]`` -> (name, None, -N); ``name`` -> (name, None, None)."""
    m = SLICE_RE.match(split)
    if not m:
        raise FlanbuildError(f"invalid split {split!r} (use a split name, name[-N:] or name[:-N])")
    return m["name"], (int(m["last"]) if m["last"] else None), (int(m["head"]) if m["head"] else None)
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
    revision: str | None = None  # hub revision passed to datasets.load_dataset (e.g. refs/convert/parquet)
    manual: str | None = None  # how to get the data when the hub has no plain copy
    mirror_id: str | None = None  # where a local mirror keeps this source when not under hub id/config:
    #                               "<old hub id>" or "<old hub id>/<config>"
    tables: dict[str, Any] = field(default_factory=dict)  # role -> in-memory pyarrow Table (Python API, NIv2)
    max_rows: int | None = None  # read only the first N rows of each source split, in file order (huge sources:
    #                              streamed from the Hub instead of downloaded whole); a carve is cut from them

    def split_name(self, role: str) -> str:
        """The source split behind a role, with its slice if carved (used in example ids and mixture.json)."""
        return self.splits.get(role, role)

    def base_split(self, role: str) -> str:
        """The source split name behind a role, without a carve slice (what a mirror or the hub calls it)."""
        return parse_slice(self.splits.get(role, role))[0]

    def mirror_location(self) -> tuple[str, str]:
        """(hub id, config) under which a local mirror keeps this source."""
        if self.mirror_id:
            parts = self.mirror_id.strip("/").split("/")
            if len(parts) == 3:
                return "/".join(parts[:2]), parts[2]
            return self.mirror_id, self.config
        return self.hub or "", self.config


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
    duplicates: tuple[str, ...] = ()  # tasks whose source rows this task repeats (FLAN recipes use one copy)
    origin: str = ""  # the card file, for error messages
    nulls: str = "error"  # a row whose text field is null: "error" (one-line error) or "skip" (dropped)
    override: bool = False  # the card replaces a task of the same name from an earlier catalog (explicitly)
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
    try:  # parse only (and the sandbox's nesting limits): compiling waits until a row needs the expression
        parse_expression(source)
    except jinja2.TemplateSyntaxError as e:
        raise FlanbuildError(f"{what}: invalid expression {source[:200]!r}: {e.message}", where=loc) from None
    except jinja2.exceptions.SecurityError as e:
        raise FlanbuildError(f"{what}: refused by the sandbox: {e}", where=loc) from None
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
    splits = _resolve_splits(splits, loc)
    max_rows = _check_max_rows(obj.get("max_rows"), loc)
    mirror_id = obj.get("mirror_id")
    if mirror_id is not None and (not isinstance(mirror_id, str) or not 2 <= len(mirror_id.strip("/").split("/")) <= 3):
        raise FlanbuildError("source.mirror_id must be '<hub id>' or '<hub id>/<config>'", where=loc)
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
        files=files, revision=obj.get("revision"), manual=obj.get("manual"), mirror_id=mirror_id,
        max_rows=max_rows,
    )


def _check_max_rows(max_rows: Any, loc: str) -> int | None:
    """``source.max_rows``: a whole number >= 1, or absent."""
    if max_rows is not None and (not isinstance(max_rows, int) or isinstance(max_rows, bool) or max_rows < 1):
        raise FlanbuildError("source.max_rows must be a whole number of rows >= 1 (the first N rows of each split "
                             "are read, in file order)", where=loc)
    return max_rows


def _resolve_splits(splits: dict, loc: str) -> dict[str, str]:
    """Role -> split name, with FLAN's ``train[-N:]`` carves written out as slices.

    ``eval: {from: train, last: N}`` makes eval the last N rows of the source split ``train``; the role that
    reads the same source split for training then reads all but those N rows (``train[:-N]``), so training
    never sees a carved eval row.
    """
    out: dict[str, str] = {}
    carves: dict[str, int] = {}
    for role, spec in splits.items():
        if isinstance(spec, dict):
            if set(spec) != _CARVE_KEYS or not isinstance(spec["last"], int) or isinstance(spec["last"], bool) \
                    or spec["last"] < 1 or not isinstance(spec["from"], str):
                raise FlanbuildError(f"source.splits.{role}: a carve is {{from: <split>, last: <rows, >= 1>}}", where=loc)
            out[role] = f"{spec['from']}[-{spec['last']}:]"
            carves[spec["from"]] = spec["last"]
        else:
            out[role] = str(spec)
            try:
                parse_slice(out[role])
            except FlanbuildError as e:
                raise FlanbuildError(f"source.splits.{role}: {e}", where=loc) from None
    for role, split in out.items():
        if split in carves:
            out[role] = f"{split}[:-{carves[split]}]"
    return out


def parse_card(doc: Any, path: Path, catalog_dir: Path, templates: tuple[Template, ...] = ()) -> Task:
    """Validate one task card; every problem is reported with file and line."""
    check_card_types(doc, path)
    name = _check_header(doc, path)
    fields = _parse_fields(doc, path, name)
    answer = _check_expression(doc["answer"], f"task {name}: answer", where(path, doc, "answer"))
    flt = doc.get("filter")
    if flt is not None:
        _check_expression(flt, f"task {name}: filter", where(path, doc, "filter"))
    metric = doc.get("metric", "")
    if metric and metric not in METRICS:
        raise FlanbuildError(f"task {name}: unknown metric {metric!r} (one of {', '.join(METRICS)})",
                             where=where(path, doc, "metric"))
    features = None
    if doc.get("features") is not None:
        features = schema.parse_features(doc["features"], where(path, doc, "features"))
    return Task(
        name=name, cluster=str(doc["cluster"]), source=_parse_source(doc["source"], path, doc, catalog_dir),
        fields=fields, type=doc["type"], answer=answer, templates=templates, options=_parse_options(doc, path, name),
        filter=flt, features=features, metric=metric, subcluster=doc.get("subcluster"),
        description=str(doc.get("description") or "").strip(), homepage=doc.get("homepage"), license=doc.get("license"),
        examples=_parse_examples(doc, path, name), duplicates=_parse_duplicates(doc, path, name), origin=str(path),
        nulls=doc.get("nulls") or "error", override=bool(doc.get("override")),
    )


def _check_header(doc: Any, path: Path) -> str:
    """Known keys, required keys, the name and the type; returns the task name."""
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
    return name


def _parse_fields(doc: LineDict, path: Path, name: str) -> dict[str, str]:
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
    return {str(k): str(v) for k, v in fields.items()}


def _parse_options(doc: LineDict, path: Path, name: str) -> tuple[str, ...] | str | None:
    options = doc.get("options")
    loc = where(path, doc, "options")
    if options is None:
        return None
    if doc["type"] == "generation":
        raise FlanbuildError(f"task {name}: a generation task has no options", where=loc)
    if not isinstance(options, list):
        return _check_expression(options, f"task {name}: options", loc)
    if not options or not all(isinstance(o, (str, int, float)) and str(o).strip() for o in options):
        raise FlanbuildError(f"task {name}: options must be a non-empty list of non-empty strings", where=loc)
    if len({str(o) for o in options}) != len(options):
        raise FlanbuildError(f"task {name}: options must be distinct", where=loc)
    return tuple(str(o) for o in options)


def _parse_examples(doc: LineDict, path: Path, name: str) -> tuple[dict, ...]:
    examples = doc.get("examples") or []
    if not isinstance(examples, list) or not all(isinstance(e, dict) for e in examples):
        raise FlanbuildError(f"task {name}: 'examples' must be a list of rows (mappings)", where=where(path, doc, "examples"))
    return tuple(_plain(e) for e in examples)


def _parse_duplicates(doc: LineDict, path: Path, name: str) -> tuple[str, ...]:
    """``duplicates: other_task`` (or a list): this card's source rows are (a subset of) those tasks' rows."""
    dup = doc.get("duplicates")
    if dup is None:
        return ()
    names = [dup] if isinstance(dup, str) else dup
    if not isinstance(names, list) or not all(isinstance(n, str) and NAME_RE.match(n) and n != name for n in names):
        raise FlanbuildError(f"task {name}: 'duplicates' names another task (or a list of them)",
                             where=where(path, doc, "duplicates"))
    return tuple(names)


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
        unknown = set(spec) - {"title", "also_remove", "override"}
        if unknown:
            raise FlanbuildError(f"cluster {name}: unknown key(s) {sorted(unknown)} (allowed: title, also_remove, "
                                 f"override)", where=loc)
        also = spec.get("also_remove") or []
        if not isinstance(also, list) or not all(isinstance(a, str) for a in also):
            raise FlanbuildError(f"cluster {name}: also_remove must be a list of cluster names", where=loc)
        if not isinstance(spec.get("title", ""), (str, type(None))) or not isinstance(spec.get("override", False), bool):
            raise FlanbuildError(f"cluster {name}: 'title' must be a string and 'override' true or false", where=loc)
        out.append(Cluster(name, str(spec.get("title") or name), tuple(map(str, also))))
    return out
