"""``flanbuild diff A B``: what changed between two builds.

From the two ``mixture.json`` files: fingerprints, configuration, split counts, tasks added, removed
or changed (split, examples, rows, templates, rows per template, source), skipped tasks, versions and
data files. With ``--data``, also the rows themselves, per task: how many rendered rows are identical,
only in A, only in B, and how many of those are the same example and template rendered differently.
(Order is ignored: a different interleaving of the same rows is reported as "same rows, other order".)

The exit status follows ``diff``: 0 when the data is identical (same fingerprint), 1 when it differs.
"""

from __future__ import annotations

import json
import sys
from array import array
from collections import Counter
from pathlib import Path

from flanbuild.output.manifest import SPLITS, load_manifest, split_files

TASK_FIELDS = ("role", "cluster", "source", "templates", "examples", "rows", "dropped", "requested", "rate")


def _changes(a: dict, b: dict, keys=None) -> dict[str, tuple]:
    keys = keys or sorted(set(a) | set(b))
    return {k: (a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)}


def diff_manifests(ma: dict, mb: dict) -> dict:
    """The differences between two manifests as a JSON-able dict (empty lists/dicts: no change)."""
    ta, tb = ma["tasks"], mb["tasks"]
    changed = {}
    for name in sorted(set(ta) & set(tb)):
        c = _changes(ta[name], tb[name], TASK_FIELDS)
        rpa, rpb = ta[name].get("rows_per_template", {}), tb[name].get("rows_per_template", {})
        if rpa != rpb:
            c["rows_per_template"] = (rpa, rpb)
        if c:
            changed[name] = c
    sa, sb = ma.get("skipped", {}), mb.get("skipped", {})
    files_a = {f["path"]: f for f in ma["files"]}
    files_b = {f["path"]: f for f in mb["files"]}
    return {
        "identical": ma["fingerprint"] == mb["fingerprint"],
        "fingerprint": (ma["fingerprint"], mb["fingerprint"]),
        "counts": {s: (ma["counts"][s], mb["counts"][s]) for s in SPLITS},
        "config": _changes(ma["config"], mb["config"]),
        "tasks_added": sorted(set(tb) - set(ta)),
        "tasks_removed": sorted(set(ta) - set(tb)),
        "tasks_changed": changed,
        "skipped_added": sorted(set(sb) - set(sa)),
        "skipped_removed": sorted(set(sa) - set(sb)),
        "versions": _changes(ma.get("versions", {}), mb.get("versions", {})),
        "files": {p: ((files_a.get(p) or {}).get("sha256"), (files_b.get(p) or {}).get("sha256"))
                  for p in sorted(set(files_a) | set(files_b))
                  if (files_a.get(p) or {}).get("sha256") != (files_b.get(p) or {}).get("sha256")},
    }


def _row_hashes(out: Path, manifest: dict, split: str) -> dict[str, tuple[Counter, Counter, array]]:
    """Per task: (multiset of full-row hashes, multiset of (example, template) keys, row hash order)."""
    import pyarrow.parquet as pq

    cols = ["task_name", "example_id", "template_id", "inputs", "targets", "references", "options", "template_type"]
    out_: dict[str, tuple[Counter, Counter, array]] = {}
    for path in split_files(out, manifest, split):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=8192, columns=cols):
            d = batch.to_pydict()
            for task, ex, tpl, inp, tgt, refs, opts, ttype in zip(*(d[c] for c in cols)):
                rows, keys, order = out_.setdefault(task, (Counter(), Counter(), array("q")))
                h = hash((ex, tpl, inp, tgt, tuple(refs), tuple(opts), ttype))
                rows[(h, ex, tpl)] += 1
                keys[(ex, tpl)] += 1
                order.append(h)
    return out_


def diff_data(a: Path, ma: dict, b: Path, mb: dict) -> dict:
    """Per (split, task): identical rows, rows only in A / only in B, and re-rendered rows."""
    result = {}
    for split in SPLITS:
        ha, hb = _row_hashes(a, ma, split), _row_hashes(b, mb, split)
        for task in sorted(set(ha) | set(hb)):
            ra, _, oa = ha.get(task, (Counter(), Counter(), array("q")))
            rb, _, ob = hb.get(task, (Counter(), Counter(), array("q")))
            same = sum((ra & rb).values())
            only_a, only_b = ra - rb, rb - ra
            # of the differing rows, those whose (example, template) exists on both sides: re-rendered
            ka_diff = Counter({(ex, tpl): n for (h, ex, tpl), n in only_a.items()})
            kb_diff = Counter({(ex, tpl): n for (h, ex, tpl), n in only_b.items()})
            rerendered = sum((ka_diff & kb_diff).values())
            ea_diff = Counter({ex: n for (h, ex, tpl), n in only_a.items()})
            eb_diff = Counter({ex: n for (h, ex, tpl), n in only_b.items()})
            other_template = sum((ea_diff & eb_diff).values()) - rerendered
            entry = {"same": same, "only_a": sum(only_a.values()), "only_b": sum(only_b.values()),
                     "rerendered": rerendered, "other_template": other_template}
            if entry["only_a"] == entry["only_b"] == 0 and oa != ob:
                entry["reordered"] = True
            if entry["only_a"] or entry["only_b"] or entry.get("reordered"):
                result[f"{split}/{task}"] = entry
    return result


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, int):
        return f"{v:,}"
    if v is None:
        return "-"
    return json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def format_diff(a: Path, b: Path, d: dict, data: dict | None = None) -> str:
    lines = [f"A: {a}  (fingerprint {d['fingerprint'][0][:12]})", f"B: {b}  (fingerprint {d['fingerprint'][1][:12]})",
             "data: identical (same content fingerprint)" if d["identical"] else "data: differs"]
    for s, (x, y) in d["counts"].items():
        lines.append(f"  {s}: {x:,} -> {y:,} rows ({y - x:+,})" if x != y else f"  {s}: {x:,} rows (same count)")
    if d["config"]:
        lines.append("config:")
        lines += [f"  {k}: {_fmt(x)} -> {_fmt(y)}" for k, (x, y) in d["config"].items()]
    for key, title in (("tasks_added", "tasks only in B"), ("tasks_removed", "tasks only in A"),
                       ("skipped_added", "skipped only in B"), ("skipped_removed", "skipped only in A")):
        if d[key]:
            lines.append(f"{title} ({len(d[key])}): {', '.join(d[key])}")
    if d["tasks_changed"]:
        lines.append(f"tasks changed ({len(d['tasks_changed'])}):")
        lines += [f"  {name}: " + "; ".join(_task_change(k, x, y) for k, (x, y) in changes.items())
                  for name, changes in d["tasks_changed"].items()]
    if d["versions"]:
        lines.append("versions: " + ", ".join(f"{k} {_fmt(x)} -> {_fmt(y)}" for k, (x, y) in d["versions"].items()))
    if d["files"] and not d["identical"]:
        lines.append("data files differing: " + ", ".join(d["files"]))
    if data is not None:
        lines += _format_rows(data)
    return "\n".join(lines)


def _task_change(key: str, x, y) -> str:
    if key != "rows_per_template":
        return f"{key} {_fmt(x)} -> {_fmt(y)}"
    ids = sorted(set(x) | set(y), key=int)
    moved = [i for i in ids if x.get(i) != y.get(i)]
    new, gone = [i for i in ids if i not in x], [i for i in ids if i not in y]
    return (f"rows per template differ for {len(moved)} of {len(ids)} templates"
            + (f" (new: {', '.join(new)})" if new else "") + (f" (gone: {', '.join(gone)})" if gone else ""))


def _format_rows(data: dict) -> list[str]:
    """The --data part: per split/task, how the rows themselves differ."""
    if not data:
        return ["rows: every task has the same rows in the same order"]
    lines = ["rows (per split/task; order ignored):"]
    for key, e in data.items():
        if e.get("reordered"):
            lines.append(f"  {key}: same {e['same']:,} rows, other order")
            continue
        notes = ([f"{e['other_template']:,} same example, other template"] if e["other_template"] else []) + \
                ([f"{e['rerendered']:,} same example and template, rendered differently"] if e["rerendered"] else [])
        lines.append(f"  {key}: {e['same']:,} same, {e['only_a']:,} only in A, {e['only_b']:,} only in B"
                     + (f" ({'; '.join(notes)})" if notes else ""))
    return lines


def diff_command(a: Path, b: Path, *, data: bool = False, as_json: bool = False, file=None) -> int:
    a, b = Path(a), Path(b)
    ma, mb = load_manifest(a), load_manifest(b)
    d = diff_manifests(ma, mb)
    rows = diff_data(a, ma, b, mb) if data else None
    file = file or sys.stdout
    if as_json:
        print(json.dumps({**d, **({"rows": rows} if rows is not None else {})}, indent=2), file=file)
    else:
        print(format_diff(a, b, d, rows), file=file)
    return 0 if d["identical"] else 1
