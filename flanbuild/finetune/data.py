"""Reading a flanbuild mixture directory with pyarrow (no torch, no builder code).

Layout (written by ``flanbuild build --out OUT``)::

    OUT/data/{split}-{i:05d}-of-{n:05d}.parquet
    OUT/mixture.json        # {"fingerprint": "...", ...}
    OUT/README.md
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from flanbuild.errors import FlanbuildError

#: Columns the fine-tune module understands. Only ``inputs`` and ``targets`` are required, so that
#: other FLAN-style Parquet (e.g. Flan Collection exports) can be trained on and evaluated too.
REQUIRED_COLUMNS = ("inputs", "targets")
OPTIONAL_COLUMNS = (
    "task_source",
    "task_name",
    "template_type",
    "cluster",
    "template_id",
    "options",
    "example_id",
    "references",
)

_SPLIT_RE = re.compile(r"^[A-Za-z0-9_.]+$")
_SHARD_RE = re.compile(r"^(?P<split>.+?)(-\d{5}-of-\d{5})?\.parquet$")


def _data_dir(data: str | Path) -> Path:
    root = Path(data).expanduser()
    if not root.exists():
        raise FlanbuildError(f"data directory not found: {root}")
    if not root.is_dir():
        raise FlanbuildError(f"--data must be a directory (the output of `flanbuild build --out DIR`): {root}")
    sub = root / "data"
    if sub.is_dir():
        return sub
    if any(root.glob("*.parquet")):  # the data/ folder itself was given
        return root
    raise FlanbuildError(f"no Parquet files in {root} (expected {root}/data/<split>-*.parquet; "
                         f"run `flanbuild build --out {root}` first)")


def available_splits(data: str | Path) -> list[str]:
    """Split names found in the mixture's data folder (sorted)."""
    folder = _data_dir(data)
    names = set()
    for f in folder.glob("*.parquet"):
        m = _SHARD_RE.match(f.name)
        if m:
            names.add(m.group("split"))
    return sorted(names)


def split_files(data: str | Path, split: str) -> list[Path]:
    """The Parquet shards of one split, in shard order; FlanbuildError if there are none."""
    folder = _data_dir(data)
    if not split or not _SPLIT_RE.match(split):
        raise FlanbuildError(f"bad split name {split!r} (expected e.g. 'train' or 'eval')")
    manifest = load_build_manifest(data) if (Path(data).expanduser() / "mixture.json").is_file() else None
    if manifest is not None:  # a flanbuild output: the shards its manifest lists (checked to exist)
        from flanbuild.output.manifest import split_files as manifest_split_files

        files = manifest_split_files(Path(data).expanduser(), manifest, split)
    else:
        files = sorted(folder.glob(f"{split}-*-of-*.parquet"))
    if not files and (folder / f"{split}.parquet").is_file():
        files = [folder / f"{split}.parquet"]
    if not files:
        found = available_splits(data)
        if not found:
            raise FlanbuildError(f"no Parquet files in {folder} (run `flanbuild build` first)")
        raise FlanbuildError(f"no {split!r} split in {folder} (found: {', '.join(found)})")
    return files


def _schema_names(f: Path, wanted) -> set[str]:
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(f)
    except Exception as exc:  # noqa: BLE001 - a corrupt/non-Parquet file is a user problem
        raise FlanbuildError(f"cannot read Parquet file {f}: {str(exc).splitlines()[0]}") from None
    for col in REQUIRED_COLUMNS:
        if col in wanted and col not in schema.names:
            raise FlanbuildError(f"{f}: missing column {col!r} (columns: {', '.join(schema.names)})")
    return set(schema.names)


def _clean_column(name: str, values: list) -> list:
    if name in ("options", "references"):
        return [list(v) if v is not None else [] for v in values]
    if name == "template_id":
        return [int(v) if v is not None else 0 for v in values]
    return ["" if v is None else v for v in values]


def _default_column(name: str, n: int, split: str, row0: int, targets: list | None) -> list:
    """Values of a column the file does not have (``references``: the target alone)."""
    if name in ("options",):
        return [[] for _ in range(n)]
    if name == "references":
        return [[t] for t in (targets or [""] * n)]
    if name == "example_id":
        return [f"{split}/{row0 + i}" for i in range(n)]
    if name == "template_id":
        return [0] * n
    return [""] * n


def _read_shard(f: Path, wanted, split: str, row0: int) -> tuple[dict[str, list], int]:
    import pyarrow.parquet as pq

    present = [c for c in wanted if c in _schema_names(f, wanted)]
    table = pq.read_table(f, columns=present)
    cols = {c: _clean_column(c, table.column(c).to_pylist()) for c in present}
    targets = cols.get("targets")
    for c in wanted:
        if c not in cols:
            cols[c] = _default_column(c, table.num_rows, split, row0, targets)
    return cols, table.num_rows


def read_split(data: str | Path, split: str, columns: tuple[str, ...] | None = None) -> dict[str, list]:
    """Read one split into a dict of Python lists (column -> values).

    Missing optional columns are filled with defaults (``options``: [], ``references``: [targets],
    ``example_id``: row number, ``template_id``: 0, strings: "").
    """
    wanted = columns or (REQUIRED_COLUMNS + OPTIONAL_COLUMNS)
    out: dict[str, list] = {c: [] for c in wanted}
    row0 = 0
    for f in split_files(data, split):
        cols, n = _read_shard(f, wanted, split, row0)
        for c in wanted:
            out[c].extend(cols[c])
        row0 += n
    if "references" in out and "targets" in out:
        # an empty references list means "only the target"
        out["references"] = [r if r else [t] for r, t in zip(out["references"], out["targets"])]
    return out


def fingerprint(data: str | Path) -> str | None:
    """The build's fingerprint (from its manifest); for other Parquet folders the ``fingerprint`` key of a
    ``mixture.json`` next to the data, or None."""
    root = Path(data).expanduser()
    manifest = load_build_manifest(root)
    if manifest is not None:
        return _field(manifest, "fingerprint")
    for cand in (root / "mixture.json", root.parent / "mixture.json"):
        if cand.is_file():
            try:
                meta = json.loads(cand.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise FlanbuildError(f"{cand}: not valid JSON ({exc})") from None
            fp = meta.get("fingerprint") if isinstance(meta, dict) else None
            return fp if isinstance(fp, str) else None
    return None


def load_build_manifest(data: str | Path):
    """The checked manifest (``flanbuild.output.manifest``) of a flanbuild output folder, or None for a
    folder of other FLAN-style Parquet (no mixture.json, or one that is not a flanbuild manifest)."""
    root = Path(data).expanduser()
    path = root / "mixture.json"
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FlanbuildError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or "flanbuild_manifest" not in doc:
        return None
    from flanbuild.output.manifest import load_manifest

    return load_manifest(root)


def _field(record, name: str, default=None):
    return record.get(name, default) if isinstance(record, dict) else getattr(record, name, default)


def task_info(data: str | Path) -> dict[str, dict]:
    """``task -> {"metric", "role", "cluster", "inverted_templates"}`` from the mixture's manifest
    (empty for Parquet without one; the evaluator then uses each kind's default metric)."""
    manifest = load_build_manifest(data)
    if manifest is None:
        return {}
    return {
        str(name): {"metric": _field(t, "metric") or None, "role": _field(t, "role"), "cluster": _field(t, "cluster"),
                    "inverted_templates": [int(x) for x in _field(t, "inverted_templates", None) or []]}
        for name, t in _field(manifest, "tasks", {}).items()
    }


def task_metrics(data: str | Path) -> dict[str, str]:
    """``task -> card metric`` (the tasks whose manifest entry names one)."""
    return {t: v["metric"] for t, v in task_info(data).items() if v.get("metric")}


def _stable_key(example_id: str) -> str:
    return hashlib.sha1(example_id.encode("utf-8")).hexdigest()


def select_rows(rows: dict[str, list], max_examples: int | None, tasks: tuple[str, ...] | None = None) -> list[int]:
    """Row indices to evaluate.

    ``tasks`` keeps only those task names. ``max_examples`` keeps, per task, the N distinct
    ``example_id``s with the smallest SHA-1 of the id (deterministic, independent of file order and
    of the other tasks), and every row (template) of a kept example.
    """
    n = len(rows["inputs"])
    task_of = rows.get("task_name") or [""] * n
    keep_tasks = set(tasks) if tasks else None
    if keep_tasks is not None:
        unknown = keep_tasks - set(task_of)
        if unknown:
            raise FlanbuildError(f"--task: no such task in the split: {', '.join(sorted(unknown))}")
    idx = [i for i in range(n) if keep_tasks is None or task_of[i] in keep_tasks]
    if max_examples is None:
        return idx
    if max_examples < 1:
        raise FlanbuildError(f"--max-examples must be >= 1 (got {max_examples})")
    ids = rows["example_id"]
    per_task: dict[str, set[str]] = {}
    for i in idx:
        per_task.setdefault(task_of[i], set()).add(ids[i])
    kept: dict[str, set[str]] = {
        t: set(sorted(s, key=_stable_key)[:max_examples]) for t, s in per_task.items()
    }
    return [i for i in idx if ids[i] in kept[task_of[i]]]
