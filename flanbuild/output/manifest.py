"""``OUT/mixture.json``: the one record of what a build made, and the only code that reads or writes it.

Every consumer (stats, card, show, diff, export, push, verify, the fine-tune and evaluate commands)
goes through :func:`load_manifest`, which checks the file against the schema below field by field, so
a hand-edited or truncated manifest is a one-line error naming the field, never a ``KeyError`` deep in
a consumer. The schema is written as ``TypedDict`` classes: the JSON stays plain (any tool can read it),
and type checkers see every key. ``docs/manifest.md`` documents it; a test keeps the two in step.

Versioning: ``flanbuild_manifest`` is :data:`SCHEMA_VERSION`. Adding a field bumps it; a reader accepts
its own version and older ones whose missing fields have defaults (see :data:`_UPGRADES`).
"""


import hashlib
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, NotRequired, TypedDict

from flanbuild.errors import FlanbuildError
from flanbuild.pipeline.writer import sha256_file

SCHEMA_VERSION = 2
FILENAME = "mixture.json"
SPLITS = ("train", "eval")


class DataFileRecord(TypedDict):
    """One Parquet shard, for integrity checks."""

    path: str  # relative to OUT, e.g. data/train-00000-of-00001.parquet
    rows: int
    bytes: int
    sha256: str


class TaskRecord(TypedDict):
    """What one task contributed."""

    role: str  # train | eval
    cluster: str
    submixture: str  # flan2021 | t0 | niv2 | cot | ...
    provider: str  # catalog | niv2 | promptsource
    source: str  # where the rows came from, e.g. mirror:nyu-mll/glue/rte/train
    read: NotRequired[str]  # when only part of the source split is read (source.max_rows): which rows, e.g. "first 30000 rows of train in file order (source.max_rows: 30000); streamed from the Hub, nothing after them downloaded"
    metric: str  # the card's metric: accuracy, exact_match, rouge, bleu, f1, ...
    templates: int
    inverted_templates: list[int]  # template ids that turn the task around (never scored as the task)
    examples: int  # distinct source examples used
    rows: int  # rows written (after decontamination)
    dropped: int  # rows a template rendered empty
    decontaminated: int  # train rows removed because they overlap eval
    rows_per_template: dict[str, int]  # template id -> rows written
    rows_per_type: dict[str, int]  # zs_opt | zs_noopt | fs_opt | fs_noopt -> rows written
    template_info: NotRequired[dict[str, dict[str, Any]]]  # promptsource tasks: template id -> name, original_task, choices_in_prompt, metrics
    available: NotRequired[int]  # train tasks only: the mixer's numbers
    used: NotRequired[int]
    rate: NotRequired[float]
    share: NotRequired[float]
    requested: NotRequired[int]
    epochs: NotRequired[float]


class DecontaminationRecord(TypedDict):
    total: int
    per_task: dict[str, int]


class ConfigRecord(TypedDict):
    """The resolved build configuration (enough to rebuild the same bytes)."""

    mixture: str
    mixture_file: str
    seed: int
    heldout: list[str]
    removed_clusters: list[str]
    extra_removals: bool
    submixtures: list[dict[str, Any]]
    prompt: dict[str, Any]
    task_cap_override: int | None
    rate_cap_override: int | None
    temperature: float
    task_weights: dict[str, float]
    cluster_weights: dict[str, float]
    train_size: int | None
    eval_cap: int | None
    max_epochs: float | None
    decontaminate: dict[str, Any]
    data_dirs: list[str]
    catalogs: list[str]
    niv2_dir: str | None
    promptsource_dir: str | None
    tasks: list[str]
    clusters: list[str]
    strict: bool
    shard_rows: int
    overrides: NotRequired[list[dict[str, str]]]  # catalog entries that replaced earlier ones (override: true)


class Manifest(TypedDict):
    flanbuild_manifest: int  # SCHEMA_VERSION
    fingerprint: str  # sha256 over the data files' (path, rows, sha256)
    command: str
    config: ConfigRecord
    counts: dict[str, int]  # split -> rows
    decontaminated: DecontaminationRecord
    tasks: dict[str, TaskRecord]
    removed_tasks: list[str]  # tasks of clusters removed with the held-out ones
    unselected_tasks: list[str]  # tasks no submixture selected
    skipped: dict[str, str]  # task -> why it has no rows
    files: list[DataFileRecord]
    versions: dict[str, str]  # package versions of the build
    build_key: NotRequired[str]  # sha256 over what decides OUT (output/uptodate.py): a rebuild with the same key is skipped


# Defaults that let this version read manifests written by an older one.
_UPGRADES: dict[int, dict[str, Any]] = {1: {"metric": "", "inverted_templates": []}}


# -- writing ------------------------------------------------------------------------------------

def fingerprint(files: list[DataFileRecord]) -> str:
    """One hash over the content of all data files (what `flanbuild verify` and evaluators compare)."""
    h = hashlib.sha256()
    for f in sorted(files, key=lambda f: f["path"]):
        h.update(f"{f['path']}\t{f['rows']}\t{f['sha256']}\n".encode())
    return h.hexdigest()


def write_manifest(out_dir: Path, manifest: Manifest) -> None:
    """Check ``manifest`` against the schema, then write it (a build never writes what it cannot read)."""
    _check(manifest, Manifest, "mixture.json")
    (Path(out_dir) / FILENAME).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# -- reading ------------------------------------------------------------------------------------

def load_manifest(out_dir: Path | str) -> Manifest:
    """A build's ``mixture.json``, checked against the schema; FlanbuildError (one line) otherwise."""
    path = Path(out_dir) / FILENAME
    if not path.is_file():
        raise FlanbuildError(f"{out_dir} is not a flanbuild output (no {FILENAME})")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise FlanbuildError(f"cannot read {path}: {' '.join(str(e).split())}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("flanbuild_manifest"), int):
        raise FlanbuildError(f"{path} is not a flanbuild manifest (no 'flanbuild_manifest' version)")
    version = doc["flanbuild_manifest"]
    if version > SCHEMA_VERSION:
        raise FlanbuildError(f"{path} has manifest version {version}; this flanbuild reads up to {SCHEMA_VERSION}: "
                             "upgrade flanbuild")
    for old in range(version, SCHEMA_VERSION):
        for entry in (doc.get("tasks") or {}).values():
            if isinstance(entry, dict):
                for key, default in _UPGRADES[old].items():
                    entry.setdefault(key, default)
    try:
        _check(doc, Manifest, "")
    except FlanbuildError as e:
        raise FlanbuildError(f"{path}: {e}") from None
    return doc  # type: ignore[return-value]


def split_files(out_dir: Path | str, manifest: Manifest, split: str) -> list[Path]:
    """The Parquet shards of one split, from the manifest's integrity record, checked to exist."""
    paths = [Path(out_dir) / f["path"] for f in manifest["files"] if f["path"].startswith(f"data/{split}-")]
    for p in paths:
        if not p.is_file():
            raise FlanbuildError(f"{p} is listed in {FILENAME} but missing; rebuild the mixture")
    return sorted(paths)


def verify(out_dir: Path | str) -> list[str]:
    """Recompute the data files' hashes and compare with ``mixture.json``; returns the problems."""
    import pyarrow.parquet as pq

    out = Path(out_dir)
    manifest = load_manifest(out)
    problems = []
    for f in manifest["files"]:
        path = out / f["path"]
        if not path.is_file():
            problems.append(f"{f['path']}: missing")
            continue
        digest = sha256_file(path)
        if path.stat().st_size != f["bytes"] or digest != f["sha256"]:
            problems.append(f"{f['path']}: content differs from {FILENAME} (sha256 {digest[:16]}..., "
                            f"recorded {f['sha256'][:16]}...)")
        elif pq.ParquetFile(path).metadata.num_rows != f["rows"]:
            problems.append(f"{f['path']}: {pq.ParquetFile(path).metadata.num_rows} rows, recorded {f['rows']}")
    listed = {f["path"] for f in manifest["files"]}
    problems += [f"{rel}: not in {FILENAME}" for rel in
                 sorted(str(p.relative_to(out)) for p in (out / "data").glob("*")) if rel not in listed]
    if fingerprint(manifest["files"]) != manifest["fingerprint"]:
        problems.append(f"the fingerprint in {FILENAME} does not match its file list")
    return problems


# -- the schema check ---------------------------------------------------------------------------

def _check(value: Any, kind: Any, where: str) -> None:
    """Raise FlanbuildError naming ``where`` if ``value`` does not have type ``kind`` (a schema type)."""
    if kind is Any:
        return
    if typing.is_typeddict(kind):
        _check_record(value, kind, where)
        return
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return
        _check(value, next(a for a in args if a is not type(None)), where)
        return
    if origin is list:
        _expect(isinstance(value, list), value, "a list", where)
        for i, item in enumerate(value):
            _check(item, args[0], f"{where}[{i}]")
        return
    if origin is dict:
        _expect(isinstance(value, dict), value, "a mapping", where)
        for key, item in value.items():
            _check(item, args[1], f"{where}.{key}" if where else key)
        return
    if kind is float:
        _expect(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
                value, "a finite number", where)
        return
    if kind is int:
        _expect(isinstance(value, int) and not isinstance(value, bool), value, "an integer", where)
        return
    _expect(isinstance(value, kind), value, f"a {kind.__name__}", where)


def _check_record(value: Any, record: type, where: str) -> None:
    _expect(isinstance(value, dict), value, "a mapping", where)
    hints = typing.get_type_hints(record)
    for key, kind in hints.items():
        at = f"{where}.{key}" if where else key
        if key not in value:
            if key in record.__optional_keys__:
                continue
            raise FlanbuildError(f"{at}: missing")
        _check(value[key], kind, at)
    unknown = sorted(set(value) - set(hints))
    if unknown:
        raise FlanbuildError(f"{where + '.' if where else ''}{unknown[0]}: unknown field "
                             f"(the schema is in flanbuild/output/manifest.py)")


def _expect(ok: bool, value: Any, what: str, where: str) -> None:
    if not ok:
        raise FlanbuildError(f"{where or 'mixture.json'}: expected {what}, got {type(value).__name__} "
                             f"{json.dumps(value, default=str)[:40]}")
