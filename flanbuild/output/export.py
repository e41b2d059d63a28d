"""Trainer-ready exports of a built mixture: ``flanbuild export OUT --format F --out DIR``.

Formats (``FORMATS``), each a folder that ``datasets.load_dataset(DIR)`` reads as ``train``/``eval``:

* ``flan``: the mixture's own columns (``inputs``, ``targets``, ``task_name``, ...);
* ``chat``: the same plus ``messages`` = [{role: user, content: inputs}, {role: assistant, content: targets}]
  (TRL ``SFTTrainer``, axolotl ``type: chat_template``, LLaMA-Factory ``sharegpt``);
* ``prompt-completion``: ``prompt`` (inputs + separator, default a newline) and ``completion`` (targets),
  then the metadata columns (TRL's prompt-completion type: loss on the completion only);
* ``alpaca``: ``instruction`` (inputs), ``input`` (empty), ``output`` (targets), then the metadata columns
  (axolotl ``type: alpaca``, LLaMA-Factory's default ``alpaca`` formatting).

Layout: ``DIR/data/{split}/{split}-{i:05d}-of-{n:05d}.parquet`` (or ``.jsonl``), one file per shard of
the source, plus ``README.md`` (``configs:`` + ``dataset_info`` so ``load_dataset(DIR)`` gives exactly
``train``/``eval`` with the right features), ``dataset_info.json`` (LLaMA-Factory entries
``{mixture}_train``/``{mixture}_eval``; its ``file_name`` is the split's folder) and ``export.json``
(source fingerprint, format, files with SHA-256). Written to a staging folder and renamed into place,
like the build. Rows are converted batch by batch with Arrow kernels: memory does not grow with rows.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from flanbuild.errors import FlanbuildError

FORMATS = ("flan", "chat", "prompt-completion", "alpaca")
DEFAULT_SEPARATOR = "\n"
BATCH_ROWS = 8192
EXPORT_MANIFEST = "export.json"
_TEXT = ("inputs", "targets")


@dataclass(frozen=True)
class ExportResult:
    dest: Path
    format: str
    counts: dict[str, int]
    files: list[dict]
    seconds: float

    @property
    def rows_per_second(self) -> float:
        return sum(self.counts.values()) / self.seconds if self.seconds > 0 else 0.0


def default_dest(out: Path, fmt: str, jsonl: bool = False) -> Path:
    """Where ``flanbuild build --format F`` puts its export: ``OUT/exports/F`` (``F-jsonl`` for JSONL).

    Inside OUT, so a rebuild (which replaces OUT atomically) never leaves a stale export beside it.
    """
    return Path(out) / "exports" / (fmt + ("-jsonl" if jsonl else ""))


# -- conversions (Arrow, vectorised) --------------------------------------------------------------

def output_schema(fmt: str):
    """The Arrow schema of an export format."""
    import pyarrow as pa

    from flanbuild.pipeline.render import OUTPUT_SCHEMA

    meta = [f for f in OUTPUT_SCHEMA if f.name not in _TEXT]
    if fmt == "flan":
        return OUTPUT_SCHEMA
    if fmt == "chat":
        message = pa.struct([("role", pa.string()), ("content", pa.string())])
        return pa.schema([pa.field("messages", pa.list_(message)), *OUTPUT_SCHEMA])
    if fmt == "prompt-completion":
        return pa.schema([("prompt", pa.string()), ("completion", pa.string()), *meta])
    if fmt == "alpaca":
        return pa.schema([("instruction", pa.string()), ("input", pa.string()), ("output", pa.string()), *meta])
    raise FlanbuildError(f"unknown export format {fmt!r} (known: {', '.join(FORMATS)})")


def convert(table, fmt: str, separator: str = DEFAULT_SEPARATOR):
    """One batch (a pyarrow Table in the mixture's schema) in export format ``fmt``."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    schema = output_schema(fmt)
    inputs, targets = table.column("inputs").combine_chunks(), table.column("targets").combine_chunks()
    n = table.num_rows
    meta = {name: table.column(name) for name in table.column_names if name not in _TEXT}
    if fmt == "flan":
        cols = {name: table.column(name) for name in table.column_names}
    elif fmt == "chat":
        roles = pa.array(np.tile(np.array(["user", "assistant"], dtype=object), n), pa.string())
        order = np.empty(2 * n, dtype=np.int64)
        order[0::2] = np.arange(n)
        order[1::2] = np.arange(n) + n
        contents = pa.concat_arrays([inputs, targets]).take(pa.array(order))
        structs = pa.StructArray.from_arrays([roles, contents], names=["role", "content"])
        messages = pa.ListArray.from_arrays(pa.array(np.arange(0, 2 * n + 1, 2, dtype=np.int32)), structs)
        cols = {"messages": messages, **{name: table.column(name) for name in table.column_names}}
    elif fmt == "prompt-completion":
        prompt = pc.binary_join_element_wise(inputs, pa.scalar(""), separator) if separator else inputs
        cols = {"prompt": prompt, "completion": targets, **meta}
    else:  # alpaca
        cols = {"instruction": inputs, "input": pa.array([""] * n, pa.string()), "output": targets, **meta}
    return pa.table([cols[f.name] for f in schema], schema=schema)


# -- the export -----------------------------------------------------------------------------------

def _check_dest(src: Path, dest: Path) -> None:
    if dest == src or dest in src.parents:
        raise FlanbuildError(f"export destination {dest} would replace the mixture {src}; choose another --out")
    if dest == src / "data" or src / "data" in dest.parents:
        raise FlanbuildError(f"export destination {dest} is inside the mixture's data folder; choose another --out")
    if dest.exists() and not dest.is_dir():
        raise FlanbuildError(f"export destination {dest} exists and is a file")
    if dest.is_dir() and any(dest.iterdir()) and not (dest / EXPORT_MANIFEST).is_file():
        raise FlanbuildError(f"export destination {dest} is not empty and is not a flanbuild export; "
                             "refusing to overwrite it")


def _write_jsonl(path: Path, batches) -> None:
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for table in batches:
            f.write("".join(dumps(row) + "\n" for row in table.to_pylist()))


def export(src: Path, fmt: str = "flan", dest: Path | None = None, jsonl: bool = False, *,
           separator: str = DEFAULT_SEPARATOR, log: Callable[[str], None] | None = None,
           batch_rows: int = BATCH_ROWS) -> ExportResult:
    """Export the mixture in ``src`` as ``fmt`` into ``dest`` (default ``src/exports/fmt``), atomically."""
    import pyarrow.parquet as pq

    from flanbuild.pipeline import writer
    from flanbuild.output.card import dataset_yaml, hf_features
    from flanbuild.output.manifest import SPLITS, load_manifest, split_files

    started = time.perf_counter()
    log = log or (lambda msg: None)
    src = Path(src).expanduser().absolute()
    manifest = load_manifest(src)
    schema = output_schema(fmt)
    dest = Path(dest).expanduser().absolute() if dest is not None else default_dest(src, fmt, jsonl)
    _check_dest(src, dest)
    ext = "jsonl" if jsonl else "parquet"
    stage = writer.staging_dir(dest)
    try:
        files: list[dict] = []
        counts: dict[str, int] = {}
        for split in SPLITS:
            shards = split_files(src, manifest, split)
            (stage / "data" / split).mkdir(parents=True)
            counts[split] = 0
            for i, shard in enumerate(shards):
                rel = f"data/{split}/{split}-{i:05d}-of-{len(shards):05d}.{ext}"
                pf = pq.ParquetFile(shard)
                rows = pf.metadata.num_rows

                def batches(pf=pf):
                    import pyarrow as pa

                    for batch in pf.iter_batches(batch_size=batch_rows):
                        yield convert(pa.Table.from_batches([batch]), fmt, separator)

                if jsonl:
                    _write_jsonl(stage / rel, batches())
                else:
                    with pq.ParquetWriter(stage / rel, schema, compression="zstd") as w:
                        wrote = False
                        for table in batches():
                            w.write_table(table)
                            wrote = True
                        if not wrote:
                            w.write_table(schema.empty_table())
                counts[split] += rows
                files.append({"path": rel, "rows": rows, "bytes": (stage / rel).stat().st_size,
                              "sha256": writer.sha256_file(stage / rel)})
            log(f"export {fmt}: {split} {counts[split]} rows")
        name = manifest["config"]["mixture"]
        by_split = {s: [f for f in files if f["path"].startswith(f"data/{s}/")] for s in SPLITS}
        info = {
            "flanbuild_export": 1,
            "format": fmt,
            "file_type": ext,
            "separator": separator if fmt == "prompt-completion" else None,
            "source": {"path": str(src), "mixture": name, "fingerprint": manifest["fingerprint"]},
            "counts": counts,
            "files": files,
        }
        writer.write_json(stage / EXPORT_MANIFEST, info)
        writer.write_json(stage / "dataset_info.json", llamafactory_info(fmt, name, ext))
        header = dataset_yaml(by_split, hf_features(schema), rows=counts,
                              pretty_name=f"FLAN-style mixture {name}, {fmt} format")
        (stage / "README.md").write_text(header + "\n\n" + _export_body(fmt, name, manifest, counts, ext, separator),
                                         encoding="utf-8")
        writer.publish(stage, dest)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    result = ExportResult(dest, fmt, counts, files, time.perf_counter() - started)
    log(f"wrote {dest}: {fmt} ({ext}), train {counts['train']} rows, eval {counts['eval']} rows, "
        f"{result.seconds:.1f}s ({result.rows_per_second:,.0f} rows/s)")
    return result


def llamafactory_info(fmt: str, name: str, ext: str) -> dict:
    """LLaMA-Factory ``dataset_info.json`` entries for both splits (``file_name``: the split's folder)."""
    if fmt == "chat":
        spec = {"formatting": "sharegpt", "columns": {"messages": "messages"},
                "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                         "assistant_tag": "assistant"}}
    else:
        prompt, response = {"flan": ("inputs", "targets"), "prompt-completion": ("prompt", "completion"),
                            "alpaca": ("instruction", "output")}[fmt]
        columns = {"prompt": prompt, "response": response}
        if fmt == "alpaca":
            columns = {"prompt": "instruction", "query": "input", "response": "output"}
        spec = {"formatting": "alpaca", "columns": columns}
    return {f"{name}_{split}": {"file_name": f"data/{split}", **spec} for split in ("train", "eval")}


def _export_body(fmt: str, name: str, manifest: dict, counts: dict, ext: str, separator: str) -> str:
    from flanbuild.output.card import _fenced, code

    columns = {
        "flan": "the mixture's own columns (`inputs`, `targets`, `task_name`, `cluster`, `template_id`, ...)",
        "chat": "`messages` (a user turn with `inputs`, an assistant turn with `targets`) followed by the "
                "mixture's own columns",
        "prompt-completion": f"`prompt` (`inputs` followed by {code(json.dumps(separator))}) and `completion` "
                             "(`targets`), then the metadata columns (`task_name`, `cluster`, `template_id`, ...)",
        "alpaca": "`instruction` (`inputs`), `input` (empty: FLAN instructions already contain their input) and "
                  "`output` (`targets`), then the metadata columns",
    }[fmt]
    usage = {
        "chat": _fenced("from datasets import load_dataset\nfrom trl import SFTConfig, SFTTrainer\n\n"
                        "ds = load_dataset(\"path/to/this/folder\")\n"
                        "trainer = SFTTrainer(model=\"your/model\", train_dataset=ds[\"train\"],\n"
                        "                     args=SFTConfig(output_dir=\"run\", assistant_only_loss=False))\n"
                        "trainer.train()", "python")
        + "\n\naxolotl:\n\n" + _fenced("datasets:\n  - path: path/to/this/folder\n    type: chat_template\n"
                                        "    field_messages: messages\n    split: train", "yaml"),
        "prompt-completion": _fenced("from datasets import load_dataset\nfrom trl import SFTConfig, SFTTrainer\n\n"
                                     "ds = load_dataset(\"path/to/this/folder\")\n"
                                     "trainer = SFTTrainer(model=\"your/model\", train_dataset=ds[\"train\"],\n"
                                     "                     args=SFTConfig(output_dir=\"run\"))  # loss on completions\n"
                                     "trainer.train()", "python"),
        "alpaca": "axolotl:\n\n" + _fenced("datasets:\n  - path: path/to/this/folder\n    type: alpaca\n"
                                           "    split: train", "yaml"),
        "flan": _fenced("from datasets import load_dataset\n\nds = load_dataset(\"path/to/this/folder\")", "python"),
    }[fmt]
    return "\n".join([
        f"# {name}: {fmt} export", "",
        f"The FLAN-style mixture {code(name)} (content fingerprint {code(manifest['fingerprint'])}) exported by "
        f"`flanbuild export` as {code(fmt)} ({ext}): train {counts['train']:,} rows, eval {counts['eval']:,} rows. "
        "The mixture's own card (composition, sources and licenses) is the README.md of the folder it was "
        "exported from.", "",
        f"Columns: {columns}.", "",
        "Load it with `datasets.load_dataset(\"path/to/this/folder\")` (splits `train` and `eval`).", "",
        usage, "",
        f"LLaMA-Factory: set `dataset_dir` to this folder and `dataset` to {code(name + '_train')} "
        f"(entries in `dataset_info.json`).", "",
    ])
