"""Looking inside a build from the terminal: ``flanbuild stats OUT`` and ``flanbuild show OUT``.

``stats`` prints the composition (clusters, tasks, template types) and length statistics as rich
tables (plain text when not on a terminal), and with ``--plot`` writes the card's two PNGs.
``show`` prints rendered rows, filtered by task, cluster and template, streaming the split's Parquet
files and stopping as soon as it has printed enough rows.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from flanbuild.errors import FlanbuildError
from flanbuild.output.manifest import SPLITS, load_manifest, split_files
from flanbuild.output.stats import MixtureStats, scan

PLAIN_WIDTH = 140  # table width when stdout is not a terminal (pipes, logs, docs)


def console(file=None):
    try:
        from rich.console import Console
    except ImportError:
        raise FlanbuildError("this command needs the 'rich' package (pip install rich)") from None

    file = file or sys.stdout
    tty = getattr(file, "isatty", lambda: False)()
    return Console(file=file, width=None if tty else PLAIN_WIDTH, highlight=False, soft_wrap=False,
                   force_terminal=None if tty else False)


# -- stats ----------------------------------------------------------------------------------------

def stats_data(manifest: dict, st: MixtureStats | None) -> dict:
    """The numbers ``flanbuild stats`` shows (also its ``--json`` output)."""
    counts = manifest["counts"]
    tasks = {}
    for name, t in sorted(manifest["tasks"].items(), key=lambda x: (x[1]["role"] != "train", x[1]["cluster"], x[0])):
        total = counts[t["role"]] or 1
        tasks[name] = {"split": t["role"], "cluster": t["cluster"], "examples": t["examples"], "rows": t["rows"],
                       "share": round(t["rows"] / total, 6), "templates": t["templates"],
                       "template_types": dict(sorted(st.template_types.get((t["role"], name), {}).items())) if st else None}
    clusters: dict[str, dict] = {}
    for name, t in tasks.items():
        c = clusters.setdefault(t["cluster"], {"split": t["split"], "tasks": 0, "rows": 0})
        c["tasks"] += 1
        c["rows"] += t["rows"]
    for c in clusters.values():
        c["share"] = round(c["rows"] / (counts[c["split"]] or 1), 6)
    out = {
        "mixture": manifest["config"]["mixture"],
        "fingerprint": manifest["fingerprint"],
        "seed": manifest["config"]["seed"],
        "heldout": manifest["config"]["heldout"],
        "removed_clusters": manifest["config"]["removed_clusters"],
        "counts": counts,
        "skipped": len(manifest.get("skipped", {})),
        "clusters": dict(sorted(clusters.items(), key=lambda x: (x[1]["split"] != "train", -x[1]["rows"], x[0]))),
        "tasks": tasks,
    }
    if st is not None:
        out["lengths"] = {f"{split}/{col}": {"chars": st.dist(split, col).summary(),
                                             **({"tokens": st.dist(split, col, "tokens").summary()} if st.tokens else {})}
                          for split in SPLITS for col in ("inputs", "targets") if st.dist(split, col).n}
    return out


def print_stats(data: dict, con) -> None:
    c = data["counts"]
    con.print(f"[bold]{data['mixture']}[/bold]  train {c['train']:,} rows, eval {c['eval']:,} rows  "
              f"(seed {data['seed']}, held out: {', '.join(data['heldout']) or 'none'}, removed: "
              f"{', '.join(data['removed_clusters']) or 'none'}, {data['skipped']} task(s) skipped)")
    con.print(f"fingerprint {data['fingerprint']}", style="dim")
    tables = [_cluster_table(data), _task_table(data)] + ([_length_table(data)] if "lengths" in data else [])
    for t in tables:
        con.print()
        con.print(t)


def _table(title: str, columns):
    from rich.table import Table

    t = Table(title=title, title_justify="left", show_edge=False)
    for col, justify in columns:
        t.add_column(col, justify=justify)
    return t


def _cluster_table(data: dict):
    t = _table("Clusters", (("cluster", "left"), ("split", "left"), ("tasks", "right"), ("rows", "right"),
                            ("share", "right")))
    for name, cl in data["clusters"].items():
        t.add_row(name, cl["split"], str(cl["tasks"]), f"{cl['rows']:,}", f"{cl['share']:.1%}")
    return t


def _task_table(data: dict):
    types = sorted({k for task in data["tasks"].values() for k in (task["template_types"] or {})})
    t = _table("Tasks", (("task", "left"), ("cluster", "left"), ("split", "left"), ("examples", "right"),
                         ("rows", "right"), ("share", "right"), ("templates", "right"), *[(x, "right") for x in types]))
    prev = None
    for name, task in data["tasks"].items():
        if prev is not None and task["split"] != prev:
            t.add_section()
        prev = task["split"]
        tt = task["template_types"] or {}
        t.add_row(name, task["cluster"], task["split"], f"{task['examples']:,}", f"{task['rows']:,}",
                  f"{task['share']:.1%}", str(task["templates"]), *[f"{tt.get(x, 0):,}" for x in types])
    return t


def _length_table(data: dict):
    units = ["chars"] + (["tokens"] if any("tokens" in v for v in data["lengths"].values()) else [])
    t = _table("Lengths", (("split/column", "left"), ("unit", "left"), ("mean", "right"), ("median", "right"),
                           ("p95", "right"), ("max", "right")))
    for key, by_unit in data["lengths"].items():
        for d in (by_unit.get(unit) for unit in units):
            if d:
                t.add_row(key, unit_of(by_unit, d), f"{d['mean']:,.1f}", f"{d['median']:,}", f"{d['p95']:,}",
                          f"{d['max']:,}")
    return t


def unit_of(by_unit: dict, d: dict) -> str:
    return next(u for u, v in by_unit.items() if v is d)


def stats_command(out: Path, *, as_json: bool = False, plot: bool = False, plot_dir: Path | None = None,
                  manifest_only: bool = False, tokenizer: str | None = None, file=None) -> int:
    out = Path(out)
    manifest = load_manifest(out)
    st = None if manifest_only and not plot else scan(out, manifest, tokenizer=tokenizer)
    data = stats_data(manifest, None if manifest_only else st)
    file = file or sys.stdout
    if as_json:
        print(json.dumps(data, indent=2), file=file)
    else:
        print_stats(data, console(file))
    if plot:
        from flanbuild.output.plots import write_plots

        target = Path(plot_dir) if plot_dir else out
        target.mkdir(parents=True, exist_ok=True)
        names = write_plots(target, manifest, st)
        for n in names.values():
            print(f"wrote {target / n}", file=sys.stderr)
    return 0


# -- show -----------------------------------------------------------------------------------------

def _check_filters(manifest: dict, split: str, task: str | None, cluster: str | None, template: int | None) -> None:
    entries = manifest["tasks"]
    in_split = sorted(n for n, t in entries.items() if t["role"] == split)
    if task is not None:
        if task not in entries:
            raise FlanbuildError(f"task {task!r} is not in this mixture (its {split} tasks: {', '.join(in_split)})")
        if entries[task]["role"] != split:
            raise FlanbuildError(f"task {task!r} is in the {entries[task]['role']} split, not {split} "
                                 f"(use --split {entries[task]['role']})")
        if template is not None and str(template) not in entries[task].get("rows_per_template", {}):
            ids = ", ".join(entries[task].get("rows_per_template", {})) or "none"
            raise FlanbuildError(f"task {task!r} has no rows from template {template} (templates used: {ids})")
    if cluster is not None:
        clusters = sorted({t["cluster"] for t in entries.values() if t["role"] == split})
        if cluster not in clusters:
            raise FlanbuildError(f"cluster {cluster!r} has no {split} rows in this mixture "
                                 f"({split} clusters: {', '.join(clusters) or 'none'})")


def iter_rows(out: Path, manifest: dict, split: str = "train", *, task: str | None = None,
              cluster: str | None = None, template: int | None = None, offset: int = 0):
    """Matching rows as (position in the split, row dict), streamed in file order."""
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if split not in SPLITS:
        raise FlanbuildError(f"unknown split {split!r} (train or eval)")
    _check_filters(manifest, split, task, cluster, template)
    position, skipped = 0, 0
    for path in split_files(out, manifest, split):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
            mask = None
            for col, value in (("task_name", task), ("cluster", cluster), ("template_id", template)):
                if value is not None:
                    m = pc.equal(batch.column(col), value)
                    mask = m if mask is None else pc.and_(mask, m)
            idx = np.arange(batch.num_rows) if mask is None else np.flatnonzero(mask.to_numpy(zero_copy_only=False))
            if skipped < offset:
                drop = min(offset - skipped, len(idx))
                idx, skipped = idx[drop:], skipped + drop
            if len(idx):
                for i, row in zip(idx.tolist(), batch.take(idx).to_pylist()):
                    yield position + i, row
            position += batch.num_rows


def format_row(position: int, split: str, row: dict) -> tuple[str, str]:
    """(header line, body) of one row, as ``flanbuild show`` prints it."""
    head = (f"=== {row['example_id']}  ·  {row['task_name']} ({row['cluster']})  ·  template {row['template_id']} "
            f"{row['template_type']}  ·  {split} row {position}")
    body = [row["inputs"], f">>> {row['targets']}"]
    if row.get("options"):
        body.append(f"    options: {' | '.join(row['options'])}")
    others = [r for r in row.get("references") or [] if r != row["targets"]]
    if others:
        body.append(f"    other references: {' | '.join(others)}")
    if row.get("few_shot_ids"):
        body.append(f"    few-shot exemplars: {', '.join(row['few_shot_ids'])}")
    return head, "\n".join(body)


def show_command(out: Path, *, split: str = "train", task: str | None = None, cluster: str | None = None,
                 template: int | None = None, n: int = 3, offset: int = 0, as_json: bool = False, file=None) -> int:
    out = Path(out)
    manifest = load_manifest(out)
    file = file or sys.stdout
    con = None if as_json else console(file)
    shown = 0
    for position, row in iter_rows(out, manifest, split, task=task, cluster=cluster, template=template,
                                   offset=offset):
        if shown >= n:
            break
        if as_json:
            print(json.dumps({"position": position, **row}, ensure_ascii=False), file=file)
        else:
            head, body = format_row(position, split, row)
            con.print(head, style="bold cyan", markup=False, highlight=False)
            con.print(body, markup=False, highlight=False, soft_wrap=True)
            con.print()
        shown += 1
    if shown == 0:
        what = ", ".join(f"{k} {v}" for k, v in (("task", task), ("cluster", cluster), ("template", template))
                         if v is not None) or "any"
        print(f"no {split} rows match ({what}, offset {offset})", file=sys.stderr)
        return 1
    return 0
