"""The embedded default sample: a few hundred real rows per split, shipped inside the package.

``flanbuild/sample/`` is laid out like a data mirror (``<hub id>/<config>/<split>.parquet``) and holds only
datasets whose licence allows redistribution (``sources.json`` records each licence and source;
``tools/make_sample.py`` regenerates it from a mirror). The loader reads it as the last resort, when
neither a card file, a mirror directory nor the Hub provides a task's split, so a build on a machine
with no data and no network still writes a (small, demo) mixture.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

ORIGIN_PREFIX = "sample:"  # SplitData.origin (mixture.json's per-task "source") of a split read from the sample


def sample_dir() -> Path:
    """The folder holding the sample (inside the installed package)."""
    return Path(__file__).resolve().parent.parent / "sample"


def find(hub_id: str, config: str, split: str) -> list[Path]:
    """The sample's Parquet file for one split, or [] if the sample does not hold it."""
    if not hub_id:
        return []
    path = sample_dir() / hub_id / config / f"{split}.parquet"
    try:  # a hub id from a card must not escape the sample folder
        path.resolve().relative_to(sample_dir())
    except ValueError:
        return []
    return [path] if path.is_file() else []


@lru_cache(maxsize=1)
def sources() -> dict:
    """``sources.json``: per dataset its licence (SPDX and as stated), source repository and commit, splits."""
    path = sample_dir() / "sources.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"datasets": []}


def dataset_info(origin: str) -> dict | None:
    """The ``sources.json`` record of the dataset behind a ``sample:<hub id>/<config>/<split>`` origin."""
    if not origin.startswith(ORIGIN_PREFIX):
        return None
    location = origin[len(ORIGIN_PREFIX):].rsplit("/", 1)[0]
    for record in sources().get("datasets", []):
        if f"{record['hub_id']}/{record['config']}" == location:
            return record
    return None


def is_sample(origin: str) -> bool:
    return origin.startswith(ORIGIN_PREFIX)


def notice(n_tasks: int) -> str:
    """The one line a build prints when some of its tasks came from the sample."""
    return (f"demo mixture from the embedded sample: {n_tasks} task{'s' if n_tasks != 1 else ''}; "
            f"give --data-dir or go online for the full FLAN mixture")
