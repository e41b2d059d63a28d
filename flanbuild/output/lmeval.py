"""The eval split as an lm-evaluation-harness task folder: ``flanbuild export OUT --format lm-eval --out DIR``.

Run it with ``lm_eval --model hf --model_args pretrained=M --include_path DIR --tasks flanbuild_<cluster>``.

What is written (lm_eval 0.4 YAML schema, checked against lm_eval 0.4.13):

* ``DIR/data/<task>/t<template id>.parquet``: the eval rows of one (task, template), with the mixture's
  columns plus ``gold`` (the index of the target in ``options``; -1 for generation rows);
* ``DIR/<task>/t<template id>.yaml``: one lm_eval task per (task, template) named
  ``flanbuild_<task>_t<id>``, reading that file (``dataset_path: parquet``,
  ``dataset_kwargs: {data_files: {test: <absolute path>}}``). Classification rows (answer options shown)
  are ``output_type: multiple_choice`` (``doc_to_choice: options``, ``doc_to_target: gold``; metrics
  ``acc`` and ``acc_norm``); generation rows are ``generate_until`` with ``exact_match`` against every
  accepted reference (``doc_to_target: references``). Inverted templates (the task turned around) are left
  out, as FLAN never scores them as the task;
* ``DIR/<task>/_group.yaml``: group ``flanbuild_<task>``, the mean over its templates;
* ``DIR/_clusters/<cluster>.yaml``: group ``flanbuild_<cluster>``, the mean over the (task, template)
  leaves of the cluster (lm_eval aggregates over leaf tasks, each weighted equally here); and
  ``flanbuild_heldout`` over all held-out clusters;
* ``DIR/lmeval.json`` (what was exported: source fingerprint, tasks, templates, files) and ``DIR/README.md``.

FLAN reports per task the mean over templates and the best template, and per cluster the mean over tasks.
lm_eval groups can only average, so ``summarize(results)`` (``python -m flanbuild.output.lmeval
RESULTS.json``) computes FLAN's numbers from lm_eval's results file: per task mean and best template, per
cluster the mean of task means and the mean of task bests.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from flanbuild.errors import FlanbuildError

PREFIX = "flanbuild"
MANIFEST = "lmeval.json"
MC_METRICS = ("acc", "acc_norm")
GEN_METRICS = ("exact_match",)


@dataclass(frozen=True)
class LmEvalExport:
    dest: Path
    groups: list[str]  # cluster groups, then the heldout group
    tasks: dict[str, list[int]]  # task -> exported template ids
    rows: int
    seconds: float


def _names(tasks: list[str], clusters: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """lm_eval names of task groups and cluster groups, kept apart if a task is named like a cluster."""
    task_names = {t: f"{PREFIX}_{t}" for t in tasks}
    taken = set(task_names.values()) | {f"{PREFIX}_heldout"}
    cluster_names = {c: f"{PREFIX}_{c}" + ("_cluster" if f"{PREFIX}_{c}" in taken else "") for c in clusters}
    return task_names, cluster_names


def _check_dest(src: Path, dest: Path) -> None:
    if dest == src or dest in src.parents or dest == src / "data" or src / "data" in dest.parents:
        raise FlanbuildError(f"export destination {dest} would replace the mixture {src}; choose another --out")
    if dest.exists() and not dest.is_dir():
        raise FlanbuildError(f"export destination {dest} exists and is a file")
    if dest.is_dir() and any(dest.iterdir()) and not (dest / MANIFEST).is_file():
        raise FlanbuildError(f"export destination {dest} is not empty and is not a flanbuild lm-eval export; "
                             "refusing to overwrite it")


def _yaml(doc: dict) -> str:
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper, value: str):  # "\n" rather than YAML's folded blank lines
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style='"' if "\n" in value else None)

    Dumper.add_representer(str, text)
    return yaml.dump(doc, Dumper=Dumper, sort_keys=False, allow_unicode=True, width=1000)


def export_lmeval(src: Path, dest: Path, *, separator: str = "\n", max_gen_toks: int = 256,
                  log: Callable[[str], None] | None = None) -> LmEvalExport:
    """Write the eval split of the mixture ``src`` as an lm_eval task folder ``dest`` (atomically)."""
    from flanbuild.pipeline import writer

    started = time.perf_counter()
    log = log or (lambda msg: None)
    src = Path(src).expanduser().absolute()
    dest = Path(dest).expanduser().absolute()
    manifest, table = _eval_rows(src)
    _check_dest(src, dest)
    tasks = sorted(set(table.column("task_name").to_pylist()))
    clusters_of = {t: manifest["tasks"][t]["cluster"] for t in tasks}
    task_group, cluster_group = _names(tasks, sorted(set(clusters_of.values())))
    stage = writer.staging_dir(dest)
    try:
        leaves = _Leaves(stage, dest, separator, max_gen_toks)
        for task in tasks:
            group = leaves.write_task(task, task_group[task], clusters_of[task], table,
                                      set(manifest["tasks"][task]["inverted_templates"]))
            if not group:
                log(f"lm-eval: {task} has only inverted templates; left out")
        if not leaves.exported:
            raise FlanbuildError("no eval rows left for lm-eval once inverted templates are left out")
        groups = _write_groups(stage, leaves, clusters_of, task_group, cluster_group)
        info = _info(src, manifest, groups, leaves, clusters_of, task_group, separator)
        writer.write_json(stage / MANIFEST, info)
        (stage / "README.md").write_text(_readme(info, dest), encoding="utf-8")
        writer.publish(stage, dest)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    result = LmEvalExport(dest, groups, leaves.exported, leaves.rows, time.perf_counter() - started)
    log(f"wrote {dest}: lm-eval tasks for {len(leaves.exported)} task(s), "
        f"{sum(len(v) for v in leaves.exported.values())} (task, template) pairs, {leaves.rows} rows; "
        f"groups {', '.join(groups)}")
    return result


def _eval_rows(src: Path):
    """The build's manifest and its whole eval split (FlanbuildError when it has no eval rows)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from flanbuild.output.manifest import load_manifest, split_files

    manifest = load_manifest(src)
    tables = [t for t in (pq.read_table(s) for s in split_files(src, manifest, "eval")) if t.num_rows]
    if not tables:
        raise FlanbuildError(f"the mixture {src} has no eval rows: nothing to export for lm-eval "
                             "(build with --heldout CLUSTER and data for that cluster)")
    return manifest, pa.concat_tables(tables)


class _Leaves:
    """Writes one lm_eval task (YAML + Parquet) per (task, template) and remembers what it wrote."""

    def __init__(self, stage: Path, dest: Path, separator: str, max_gen_toks: int):
        self.stage, self.dest, self.separator, self.max_gen_toks = stage, dest, separator, max_gen_toks
        self.exported: dict[str, list[int]] = {}  # task -> template ids
        self.kinds: dict[str, set[str]] = {}  # task -> {"mc", "gen"}
        self.files: list[dict] = []
        self.rows = 0

    def write_task(self, task: str, group: str, cluster: str, table, inverted: set[int]) -> list[str]:
        """The task's leaves and its group file; returns the leaf names ([] if all templates are inverted)."""
        import pyarrow.compute as pc

        rows = table.filter(pc.equal(table.column("task_name"), task))
        leaves = [self._write_leaf(task, group, cluster, rows, tid)
                  for tid in sorted(set(rows.column("template_id").to_pylist())) if tid not in inverted]
        if leaves:
            (self.stage / task / "_group.yaml").write_text(_yaml(_group(group, leaves, self.kinds[task])),
                                                           encoding="utf-8")
        return leaves

    def _write_leaf(self, task: str, group: str, cluster: str, rows, tid: int) -> str:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        from flanbuild.pipeline import writer

        part = _with_gold(rows.filter(pc.equal(rows.column("template_id"), tid)))
        mc = all(len(o) >= 2 for o in part.column("options").to_pylist())
        if not mc:
            part = part.set_column(part.schema.get_field_index("gold"), "gold",
                                   pa.array([-1] * part.num_rows, pa.int32()))
        rel = f"data/{task}/t{tid}.parquet"
        (self.stage / rel).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(part, self.stage / rel, compression="zstd")
        self.files.append({"path": rel, "rows": part.num_rows, "sha256": writer.sha256_file(self.stage / rel)})
        self.rows += part.num_rows
        name = f"{group}_t{tid}"
        doc = _leaf(name, self.dest / rel, mc, self.separator, self.max_gen_toks, task, tid, cluster)
        (self.stage / task).mkdir(exist_ok=True)
        (self.stage / task / f"t{tid}.yaml").write_text(_yaml(doc), encoding="utf-8")
        self.kinds.setdefault(task, set()).add("mc" if mc else "gen")
        self.exported.setdefault(task, []).append(tid)
        return name


def _write_groups(stage: Path, leaves: _Leaves, clusters_of: dict[str, str], task_group: dict[str, str],
                  cluster_group: dict[str, str]) -> list[str]:
    """One group per cluster over its tasks, and one over all held-out clusters."""
    groups = []
    (stage / "_clusters").mkdir()
    for cluster in sorted(set(clusters_of[t] for t in leaves.exported)):
        members = [t for t in leaves.exported if clusters_of[t] == cluster]
        doc = _group(cluster_group[cluster], [task_group[t] for t in members],
                     set().union(*(leaves.kinds[t] for t in members)))
        (stage / "_clusters" / f"{cluster}.yaml").write_text(_yaml(doc), encoding="utf-8")
        groups.append(cluster_group[cluster])
    all_kinds = set().union(*leaves.kinds.values())
    (stage / "_clusters" / "_heldout.yaml").write_text(_yaml(_group(f"{PREFIX}_heldout", groups, all_kinds)),
                                                       encoding="utf-8")
    return groups + [f"{PREFIX}_heldout"]


def _info(src: Path, manifest: dict, groups: list[str], leaves: _Leaves, clusters_of: dict[str, str],
          task_group: dict[str, str], separator: str) -> dict:
    """The export's own record (``MANIFEST``): where it came from and what it holds."""
    exported = leaves.exported
    clusters = sorted(set(clusters_of[t] for t in exported))

    def output_type(kinds: set[str]) -> str:
        return "multiple_choice" if kinds == {"mc"} else "generate_until" if kinds == {"gen"} else "mixed"

    return {
        "flanbuild_lmeval_export": 1,
        "source": {"path": str(src), "mixture": manifest["config"]["mixture"], "fingerprint": manifest["fingerprint"]},
        "groups": groups,
        "clusters": {c: [task_group[t] for t in exported if clusters_of[t] == c] for c in clusters},
        "tasks": {t: {"group": task_group[t], "cluster": clusters_of[t], "templates": ids,
                      "output_type": output_type(leaves.kinds[t])} for t, ids in exported.items()},
        "target_delimiter": separator,
        "rows": leaves.rows,
        "files": leaves.files,
    }


def _with_gold(part):
    """Add ``gold``: the index of ``targets`` in ``options`` (-1 when it is not one of them)."""
    import pyarrow as pa

    gold = []
    for target, options in zip(part.column("targets").to_pylist(), part.column("options").to_pylist()):
        gold.append(options.index(target) if options and target in options else -1)
    if any(g < 0 for g, o in zip(gold, part.column("options").to_pylist()) if o):
        bad = next(i for i, (g, o) in enumerate(zip(gold, part.column("options").to_pylist())) if o and g < 0)
        raise FlanbuildError(f"eval row {part.column('example_id')[bad].as_py()}: its target is not one of its options")
    return part.append_column("gold", pa.array(gold, pa.int32()))


def _leaf(name: str, data_file: Path, mc: bool, separator: str, max_gen_toks: int, task: str, tid: int,
          cluster: str) -> dict:
    doc = {
        "task": name,
        "tag": [f"{PREFIX}_templates"],
        "dataset_path": "parquet",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
    }
    if mc:
        doc.update({
            "output_type": "multiple_choice",
            "doc_to_text": "inputs",
            "doc_to_choice": "options",
            "doc_to_target": "gold",
            "target_delimiter": separator,
            "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in MC_METRICS],
        })
    else:
        doc.update({
            "output_type": "generate_until",
            "doc_to_text": "{{inputs}}" + separator.replace("{", "{{ '{' }}"),
            "doc_to_target": "references",
            "generation_kwargs": {"until": ["\n\n"], "max_gen_toks": max_gen_toks, "do_sample": False},
            "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                             "ignore_case": True, "ignore_punctuation": True}],
        })
    doc["metadata"] = {"version": 1.0, "flanbuild_task": task, "template_id": tid, "cluster": cluster}
    return doc


def _group(name: str, members: list[str], kinds: set[str]) -> dict:
    metrics = [*(MC_METRICS if "mc" in kinds else ()), *(GEN_METRICS if "gen" in kinds else ())]
    return {
        "group": name,
        "task": members,
        "aggregate_metric_list": [{"metric": m, "aggregation": "mean", "weight_by_size": False} for m in metrics],
        "metadata": {"version": 1.0},
    }


def _readme(info: dict, dest: Path) -> str:
    clusters = ", ".join(f"`{g}`" for g in info["groups"])
    first = info["groups"][0]
    lines = [
        "# FLAN held-out evaluation as lm-evaluation-harness tasks", "",
        f"Exported by `flanbuild export --format lm-eval` from the mixture `{info['source']['mixture']}` "
        f"(fingerprint `{info['source']['fingerprint']}`): {len(info['tasks'])} task(s), "
        f"{sum(len(t['templates']) for t in info['tasks'].values())} (task, template) pairs, {info['rows']:,} rows.",
        "",
        "```bash",
        f"lm_eval --model hf --model_args pretrained=YOUR_MODEL --include_path {dest} --tasks {first} --device cpu",
        "```", "",
        f"Groups: {clusters} (one per held-out cluster, and all of them); `flanbuild_<task>` for one task;",
        "`flanbuild_<task>_t<id>` for one template.", "",
        "- Classification rows are `multiple_choice` over the row's answer options (`acc`, `acc_norm`), with "
        f"the continuation joined to the prompt by {json.dumps(info['target_delimiter'])}.",
        "- Generation rows are `generate_until` (greedy, stop at a blank line) scored by `exact_match` (case and "
        "punctuation ignored) against every accepted reference. For ROUGE/BLEU, use `flanbuild evaluate`.",
        "- Inverted templates are left out: FLAN never scores them as the task.",
        "- A group's score is the unweighted mean over its (task, template) leaves.", "",
        "FLAN's numbers (per task the mean over templates and the best template; per cluster the mean over "
        "tasks) from lm_eval's results file:", "",
        "```bash",
        "lm_eval ... --output_path results/",
        "python -m flanbuild.output.lmeval results/<model>/results_<date>.json",
        "```", "",
        "The data files are referenced by absolute path: re-export if you move this folder.", "",
    ]
    return "\n".join(lines)


# -- FLAN's aggregation of lm_eval results -----------------------------------------------------------

def summarize(results: dict) -> dict:
    """FLAN's numbers from an lm_eval results dict: per task mean and best template, per cluster the mean
    of task means and of task bests. Reads the ``metadata`` flanbuild wrote into every leaf's config."""
    configs = results.get("configs", {})
    scores = results.get("results", {})
    per_task: dict[str, dict] = {}
    for name, cfg in configs.items():
        meta = cfg.get("metadata") or {}
        if "flanbuild_task" not in meta or name not in scores:
            continue
        metric = next((f"{m},none" for m in ("acc", "exact_match") if f"{m},none" in scores[name]), None)
        if metric is None:
            continue
        t = per_task.setdefault(meta["flanbuild_task"], {"cluster": meta.get("cluster"), "templates": {}})
        t["templates"][int(meta["template_id"])] = {"metric": metric.split(",")[0], "score": scores[name][metric]}
    clusters: dict[str, dict] = {}
    for task, t in sorted(per_task.items()):
        values = [v["score"] for v in t["templates"].values()]
        best_id = max(t["templates"], key=lambda k: (t["templates"][k]["score"], -k))
        t.update(mean=sum(values) / len(values), best=t["templates"][best_id]["score"], best_template=best_id)
        c = clusters.setdefault(t["cluster"], {"tasks": []})
        c["tasks"].append(task)
    for c in clusters.values():
        c["mean"] = sum(per_task[t]["mean"] for t in c["tasks"]) / len(c["tasks"])
        c["best"] = sum(per_task[t]["best"] for t in c["tasks"]) / len(c["tasks"])
    return {"tasks": per_task, "clusters": clusters}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m flanbuild.output.lmeval RESULTS.json", file=sys.stderr)
        return 2
    summary = summarize(json.loads(Path(args[0]).read_text(encoding="utf-8")))
    for cluster, c in sorted(summary["clusters"].items()):
        print(f"{cluster}: mean over templates {c['mean']:.4f}, best template {c['best']:.4f} "
              f"({len(c['tasks'])} task(s))")
        for task in c["tasks"]:
            t = summary["tasks"][task]
            print(f"  {task}: mean {t['mean']:.4f}, best {t['best']:.4f} (template {t['best_template']}), "
                  f"{len(t['templates'])} templates")
    return 0


if __name__ == "__main__":
    sys.exit(main())
