"""``flanbuild sources``: where each task's data would come from, what is missing, and (``--check``) what
the Hub serves compared with the card.

Offline, every answer comes from the local disk: the card's files, the ``--data-dir`` mirrors, the
embedded sample and the local Hugging Face cache (the same order ``load_split`` uses). With ``--check``
and network, the Hub is asked through ``huggingface_hub`` (``HfApi.list_repo_files`` at the card's
revision, and each split's first Parquet file's schema read through ``HfFileSystem``), and every
difference with the card (config, split, feature, label names) is one line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from flanbuild.catalog.tasks import Task
from flanbuild.sources import loader, sample, urls


@dataclass
class Located:
    """Where each role of one task would be read from, and which roles have nothing local."""

    task: str
    where: dict[str, str] = field(default_factory=dict)  # role -> "files:...", "mirror:...", "sample:...", "hf-cache:...", "hub:..."
    missing: list[str] = field(default_factory=list)

    def line(self) -> str:
        parts = [f"{role}: {w}" for role, w in self.where.items()]
        text = f"{self.task}  " + ("; ".join(parts) if parts else "no split mapped")
        return text + (f"  MISSING offline: {', '.join(self.missing)}" if self.missing else "")


def locate(task: Task, data_dirs: list[Path], hub: bool) -> Located:
    """Where the task's train/eval rows would come from (first hit wins, as in load_split)."""
    src, out = task.source, Located(task.name)
    for role in sorted(set(src.splits) | set(src.files) | set(src.tables), key=lambda r: (r != "train", r)):
        out.where[role] = _where(task, role, data_dirs, hub)
        if out.where[role].startswith("hub:") and not hub:
            out.missing.append(role)
    return out


def _where(task: Task, role: str, data_dirs: list[Path], hub: bool) -> str:
    src = task.source
    if role in src.tables:
        return "memory"
    split = src.base_split(role)
    for r, path in src.files.items():
        if r == role or src.base_split(r) == split:
            return f"files:{path}" + ("" if Path(path).exists() else " (file missing)")
    if not src.hub:
        return "nothing (no file, no hub id)"
    hub_id, config = src.mirror_location()
    for d in data_dirs:  # a mirror at a URL is listed, not copied
        remote = isinstance(d, urls.RemoteMirror)
        if d.remote_files(hub_id, config, split) if remote else loader.find_in_mirror(d, hub_id, config, split):
            return f"mirror:{d}/{hub_id}/{config}/{split}"
    at = f"{src.hub} {src.config} {split}" + (f" @{src.revision}" if src.revision else "")
    if loader._in_hf_cache(src.hub):
        return f"hf-cache:{at}"
    if sample.find(hub_id, config, split):
        return f"sample:{hub_id}/{config}/{split}" + (f" (hub: {at})" if hub else "")
    return f"hub:{at}" + ("" if hub else f" (offline{'; the card has manual download steps' if src.manual else ''})")


# -- --check: the Hub against the card ---------------------------------------------------------------

def _split_files(files: list[str], config: str, split: str) -> list[str]:
    """The Parquet files of one config/split in a repo listing (refs/convert/parquet or data/ layouts)."""
    out = []
    for f in files:
        if not f.endswith(".parquet"):
            continue
        parts = f.split("/")
        stem = parts[-1].split("-")[0].split(".")[0]
        if len(parts) >= 3 and parts[0] == config and parts[1] in (split, f"partial-{split}"):
            out.append(f)  # refs/convert/parquet: <config>/<split>/0000.parquet
        elif len(parts) >= 2 and parts[-2] in (config, "data") and stem == split:
            out.append(f)  # <config>/<split>-00000-of-00001.parquet or data/<split>-*.parquet
    return sorted(out)


def check(task: Task, api, fs) -> list[str]:
    """One line per difference between the Hub and the card (``api``: HfApi, ``fs``: HfFileSystem)."""
    src = task.source
    if not src.hub:
        return []
    rev = src.revision
    try:
        files = api.list_repo_files(src.hub, repo_type="dataset", revision=rev)
    except Exception as e:  # noqa: BLE001 - any Hub failure is the answer for this task
        return [f"{task.name}: {src.hub}{'@' + rev if rev else ''}: cannot list the repo: {' '.join(str(e).split())[:160]}"]
    problems = []
    if any(f.endswith(".py") and "/" not in f for f in files) and not any(f.endswith(".parquet") for f in files):
        problems.append(f"{task.name}: {src.hub} holds a loading script and no Parquet at "
                        f"{rev or 'main'} (datasets >= 4 refuses scripts; try revision refs/convert/parquet)")
        return problems
    configs = {f.split("/")[0] for f in files if f.endswith(".parquet") and f.count("/") >= 2}
    if configs and src.config not in configs and src.config != "default":
        problems.append(f"{task.name}: config {src.config!r} not on the Hub at {rev or 'main'} (has: {', '.join(sorted(configs))})")
        return problems
    for role in sorted(src.splits):
        split = src.base_split(role)
        found = _split_files(files, src.config, split)
        if not found:
            problems.append(f"{task.name}: {role} split {split!r} has no Parquet file in {src.hub}/{src.config} at {rev or 'main'}")
            continue
        problems += _compare_schema(task, role, f"datasets/{src.hub}@{rev}/{found[0]}" if rev else
                                    f"datasets/{src.hub}/{found[0]}", fs)
    return problems


def _compare_schema(task: Task, role: str, path: str, fs) -> list[str]:
    import pyarrow.parquet as pq

    try:
        with fs.open(path.replace("refs/convert/parquet", "refs%2Fconvert%2Fparquet"), "rb") as fh:
            arrow_schema = pq.read_schema(fh)
    except Exception as e:  # noqa: BLE001
        return [f"{task.name}: cannot read the Parquet schema of {path}: {' '.join(str(e).split())[:160]}"]
    hub_features: dict = {}
    meta = (arrow_schema.metadata or {}).get(b"huggingface")
    if meta:
        try:
            hub_features = (json.loads(meta).get("info") or {}).get("features") or {}
        except ValueError:
            hub_features = {}
    out = []
    for name, declared in (task.features or {}).items():
        if name not in arrow_schema.names:
            out.append(f"{task.name}: feature {name!r} is not a column of the Hub's {role} split (columns: "
                       f"{', '.join(arrow_schema.names)})")
            continue
        names = declared.get("class_label") if isinstance(declared, dict) else None
        hub_names = (hub_features.get(name) or {}).get("names") if isinstance(hub_features.get(name), dict) else None
        if names and hub_names and list(map(str, names)) != list(map(str, hub_names)):
            out.append(f"{task.name}: label names of {name!r} differ: card {list(names)}, Hub {list(hub_names)}")
    return out


def hub_clients():
    """(HfApi(), HfFileSystem()) from huggingface_hub."""
    import huggingface_hub

    return huggingface_hub.HfApi(), huggingface_hub.HfFileSystem()
