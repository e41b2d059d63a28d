"""Paper-scale benchmark: the whole FLAN 2021 catalog at its real sizes, built end to end.

    python bench/bench_flan.py [--scale 1.0] [--workers 1 2] [--dask] [--flan2022] [--work DIR]

Every task of the shipped catalog (all its templates) gets a local mirror in a temporary directory:
each split the card reads is written at the task's real size (``SIZES`` below: the split sizes of the
Hub datasets the cards name, as their dataset cards' ``dataset_info.splits`` give them), capped at
30,000 rows as FLAN caps its training sets (google-research/FLAN ``flan/tasks.py``, ``train[:30000]``
via the recipe's ``task_cap``); ``--scale`` multiplies every size (``--scale 0.002`` is a CI smoke
run of a few seconds). Rows are synthesised from the task's real rows in the shared mirror (or the
embedded sample); when neither has the split, from the card's declared ``features``. Row ``i`` repeats
base row ``i mod n``, with `` [i]`` appended to its free-text string columns (those the card's answer,
options and filter do not read), so that rows differ the way real rows do.

Then ``flanbuild build`` runs with the default recipe (flan2021: nli held out) on that mirror, once
per ``--workers`` value (and on Dask with ``--dask``), without the cache, and reports total rows, wall
time, peak RSS of the whole process tree (children included) and rows/s, one summary line per run:

    bench_flan: mixture=flan2021 scale=1 engine=local workers=1 rows=N wall_s=S rows_per_s=R peak_rss_mb=M

``--rebuild`` also times a cold build with the cache, an unchanged rebuild, and a rebuild after one
template changed. ``--flan2022`` adds the flan2022 recipe with NIv2 scaled to ``--niv2-tasks`` tasks
(copies of the real NIv2 task files, renamed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import REPO, flanbuild, run_measured  # noqa: E402

FLAN_CAP = 30_000
# Split sizes of the sources the cards name (Hugging Face dataset cards, dataset_info.splits.num_examples;
# for carves, the size of the whole split the carve is cut from). Role "train"/"eval" as the card maps it.
SIZES: dict[str, dict[str, int]] = {
    "aeslc": {"train": 14_436, "eval": 1_906},
    "ag_news": {"train": 120_000, "eval": 7_600},
    "anli_r1": {"train": 16_946, "eval": 1_000},
    "anli_r2": {"train": 45_460, "eval": 1_000},
    "anli_r3": {"train": 100_459, "eval": 1_200},
    "aqua_rat": {"train": 97_467, "eval": 254},
    "arc_challenge": {"train": 1_119, "eval": 1_172},
    "arc_easy": {"train": 2_251, "eval": 2_376},
    "boolq": {"train": 9_427, "eval": 3_270},
    "cnn_dailymail": {"train": 287_113, "eval": 11_490},
    "common_gen": {"train": 67_389, "eval": 4_018},
    "coqa": {"train": 7_199, "eval": 500},
    "cosmos_qa": {"train": 25_262, "eval": 2_985},
    "dart": {"train": 62_659, "eval": 2_768},
    "dpr": {"train": 1_322, "eval": 564},
    "drop": {"train": 77_400, "eval": 9_535},
    "e2e_nlg": {"train": 42_061, "eval": 4_672},
    "fix_punct": {"train": 7_473, "eval": 1_319},
    "gigaword": {"train": 3_803_957, "eval": 1_951},
    "glue_cola": {"train": 8_551, "eval": 1_043},
    "glue_mrpc": {"train": 3_668, "eval": 408},
    "glue_qnli": {"train": 104_743, "eval": 5_463},
    "glue_qqp": {"train": 363_846, "eval": 40_430},
    "glue_rte": {"train": 2_490, "eval": 277},
    "glue_sst2": {"train": 67_349, "eval": 872},
    "glue_stsb": {"train": 5_749, "eval": 1_500},
    "glue_wnli": {"train": 635, "eval": 71},
    "gsm8k": {"train": 7_473, "eval": 1_319},
    "gsm8k_socratic": {"train": 7_473, "eval": 1_319},
    "hellaswag": {"train": 39_905, "eval": 10_042},
    "imdb": {"train": 25_000, "eval": 25_000},
    "math_dataset": {"train": 1_999_998, "eval": 10_000},
    "mnli_matched": {"train": 392_702, "eval": 9_815},
    "mnli_mismatched": {"train": 392_702, "eval": 9_832},
    "multi30k_ende": {"train": 29_000, "eval": 1_014},
    "multi_news": {"train": 44_972, "eval": 5_622},
    "newsroom": {"train": 995_041, "eval": 108_862},
    "nq_open": {"train": 87_925, "eval": 3_610},
    "openbookqa": {"train": 4_957, "eval": 500},
    "opinion_abstracts_idebate": {"train": 2_259, "eval": 2_259},
    "opinion_abstracts_rotten_tomatoes": {"train": 3_731, "eval": 3_731},
    "paracrawl_ende": {"train": 36_351_593, "eval": 36_351_593},
    "paracrawl_enes": {"train": 21_987_267, "eval": 21_987_267},
    "paracrawl_enfr": {"train": 31_374_161, "eval": 31_374_161},
    "paws": {"train": 49_401, "eval": 8_000},
    "piqa": {"train": 16_113, "eval": 1_838},
    "qrecc": {"train": 63_501, "eval": 16_451},  # apple/ml-qrecc README (question-answer pairs)
    "quac": {"train": 83_568, "eval": 7_354},
    "samsum": {"train": 14_732, "eval": 819},
    "sentiment140": {"train": 1_600_000, "eval": 498},
    "snli": {"train": 550_152, "eval": 9_824},
    "squad_v1": {"train": 87_599, "eval": 10_570},
    "squad_v2": {"train": 130_319, "eval": 11_873},
    "story_cloze": {"train": 1_871, "eval": 1_871},
    "strategyqa": {"train": 2_290},
    "super_glue_boolq": {"train": 9_427, "eval": 3_270},
    "super_glue_cb": {"train": 250, "eval": 56},
    "super_glue_copa": {"train": 400, "eval": 100},
    "super_glue_multirc": {"train": 27_243, "eval": 4_848},
    "super_glue_record": {"train": 100_730, "eval": 10_000},
    "super_glue_rte": {"train": 2_490, "eval": 277},
    "super_glue_wic": {"train": 5_428, "eval": 638},
    "super_glue_wsc": {"train": 554, "eval": 104},
    "trec": {"train": 5_452, "eval": 500},
    "trivia_qa": {"train": 138_384, "eval": 17_944},
    "tweet_eval_emotion": {"train": 3_257, "eval": 374},
    "tweet_eval_hate": {"train": 9_000, "eval": 1_000},
    "tweet_eval_irony": {"train": 2_862, "eval": 955},
    "tweet_eval_offensive": {"train": 11_916, "eval": 1_324},
    "tweet_eval_sentiment": {"train": 45_615, "eval": 2_000},
    "web_nlg": {"train": 13_211, "eval": 1_667},
    "wiki_dialog": {"train": 11_264_129, "eval": 113_822},  # TFDS wiki_dialog/OQ
    "wiki_lingua_en": {"train": 141_457, "eval": 141_457},
    "winogrande": {"train": 40_398, "eval": 1_267},
    "wmt14_enfr": {"train": 40_836_715, "eval": 3_003},
    "wmt16_encs": {"train": 997_240, "eval": 2_999},
    "wmt16_ende": {"train": 4_548_885, "eval": 2_999},
    "wmt16_enfi": {"train": 2_073_394, "eval": 3_000},
    "wmt16_enro": {"train": 610_320, "eval": 1_999},
    "wmt16_enru": {"train": 1_516_162, "eval": 2_998},
    "wmt16_entr": {"train": 205_756, "eval": 3_000},
    "wsc273": {"eval": 273},
    "wsc285": {"eval": 285},
    "xsum": {"train": 204_045, "eval": 11_334},
    "yelp_polarity": {"train": 560_000, "eval": 38_000},
}
SYNTH_BASE_ROWS = 200


# -- the mirror ---------------------------------------------------------------------------------

def _arrow_type(feat) -> pa.DataType:
    if isinstance(feat, list):
        return pa.list_(_arrow_type(feat[0]))
    if isinstance(feat, dict) and set(feat) == {"class_label"}:
        return pa.int64()
    if isinstance(feat, dict):
        return pa.struct([(k, _arrow_type(v)) for k, v in feat.items()])
    return {"string": pa.string(), "bool": pa.bool_()}.get(feat) or pa.type_for_alias(feat)


def _hf_feature(feat):
    """Compact card features -> Hugging Face Features JSON (so ClassLabel names survive, as in the mirror)."""
    if isinstance(feat, list):
        return {"feature": _hf_feature(feat[0]), "_type": "List"}
    if isinstance(feat, dict) and set(feat) == {"class_label"}:
        return {"names": feat["class_label"], "_type": "ClassLabel"}
    if isinstance(feat, dict):
        return {k: _hf_feature(v) for k, v in feat.items()}
    return {"dtype": feat, "_type": "Value"}


def _synthesised(task) -> pa.Table:
    """Rows from the card's features (a plain answer column cycles through the options, as lint does)."""
    from flanbuild.catalog.schema import synthesise

    schema = pa.schema([(k, _arrow_type(v)) for k, v in task.features.items()],
                       metadata={"huggingface": json.dumps({"info": {"features": {
                           k: _hf_feature(v) for k, v in task.features.items()}}})})
    rows = [synthesise(task.features, i) for i in range(SYNTH_BASE_ROWS)]
    column = task.answer.strip()
    if task.is_classification and isinstance(task.options, tuple) and column in task.features:
        for i, row in enumerate(rows):
            row[column] = task.options[i % len(task.options)] if task.features[column] == "string" else i % len(task.options)
    return pa.Table.from_pylist(rows, schema=schema)


def _candidates(task, split: str, mirrors: list[Path]):
    """Base tables for a split, best first: its real rows (mirror, sample), the task's other real splits,
    the card's examples, rows synthesised from the card's features."""
    from flanbuild.sources import sample
    from flanbuild.sources.loader import find_in_mirror

    hub_id, config = task.source.mirror_location()
    others = sorted({task.source.base_split(r) for r in task.source.splits} - {split})
    for name, how in [(split, "")] + [(o, f" ({o} rows)") for o in others]:
        for mirror in mirrors:
            paths = find_in_mirror(mirror, hub_id, config, name)
            if paths:
                yield pa.concat_tables(pq.read_table(p) for p in paths), "mirror" + how
        paths = sample.find(hub_id, config, name)
        if paths:
            yield pa.concat_tables(pq.read_table(p) for p in paths), "sample" + how
    if task.examples and task.features:
        schema = pa.schema([(k, _arrow_type(v)) for k, v in task.features.items()],
                           metadata={"huggingface": json.dumps({"info": {"features": {
                               k: _hf_feature(v) for k, v in task.features.items()}}})})
        try:
            yield pa.Table.from_pylist(list(task.examples), schema=schema), "card examples"
        except (pa.ArrowInvalid, pa.ArrowTypeError, KeyError):
            pass
    if task.features:
        yield _synthesised(task), "features"


def _usable(task, table: pa.Table) -> pa.Table:
    """The rows the card maps to an example (the filter keeps them, every expression evaluates)."""
    from flanbuild.errors import FlanbuildError
    from flanbuild.pipeline.examples import ExampleMapper
    from flanbuild.sources.loader import features_of

    try:
        mapper = ExampleMapper(task, features_of(table.schema))
    except FlanbuildError:
        return table.slice(0, 0)
    keep = []
    for i, row in enumerate(table.to_pylist()):
        try:
            if mapper.keep(row, "") and mapper(row, "") is not None:
                keep.append(i)
        except FlanbuildError:
            pass
    return table.take(pa.array(keep, pa.int64()))


def base_rows(task, split: str, mirrors: list[Path]) -> tuple[pa.Table, str]:
    """The best base rows of a task's split that the card can use (see _candidates)."""
    for table, origin in _candidates(task, split, mirrors):
        usable = _usable(task, table)
        if usable.num_rows:
            return usable, origin
    raise LookupError(f"{task.name}: no usable rows for {split}")


def _free_text(task, table: pa.Table) -> list[str]:
    """Top-level string columns the card's answer, options and filter do not read (safe to vary)."""
    read = " ".join(str(x) for x in (task.answer, task.options, task.filter) if x)
    return [f.name for f in table.schema if pa.types.is_string(f.type) and f.name not in read]


def scaled(table: pa.Table, rows: int, vary: list[str]) -> pa.Table:
    """``rows`` rows: row i repeats base row i mod n, free-text columns suffixed with `` [i]``."""
    idx = np.arange(rows, dtype=np.int64)
    out = table.take(pa.array(idx % table.num_rows))
    suffix = pa.array([f" [{i}]" for i in range(rows)], pa.string())
    for name in vary:
        col = out.column(name).combine_chunks()
        out = out.set_column(out.schema.get_field_index(name), name,
                             pc.if_else(pc.is_null(col), col, pc.binary_join_element_wise(col, suffix, "")))
    return out.replace_schema_metadata(table.schema.metadata)


def split_sizes(task, scale: float) -> dict[str, int]:
    """Rows to write per source split of a task (carves: the carved rows plus the capped remainder)."""
    from flanbuild.catalog.tasks import parse_slice

    real = SIZES.get(task.name, {})
    need: dict[str, int] = {}
    for role, spec in task.source.splits.items():
        split, last, head = parse_slice(spec)
        n = min(real.get(role, SYNTH_BASE_ROWS), FLAN_CAP)
        if last is not None or head is not None:  # a carve: the file holds both sides of it
            carve = -(last if last is not None else head)
            n = carve + max(8, round(min(real.get("train", carve * 2) - carve, FLAN_CAP) * scale))
        else:
            n = max(8, round(n * scale))
        need[split] = max(need.get(split, 0), n)
    return need


def make_mirror(root: Path, scale: float, mirrors: list[Path], only: tuple[str, ...] = ()) -> dict:
    """Write every catalog task's splits under ``root`` (mirror layout); returns what came from where."""
    from flanbuild.builder import load_registry

    registry = load_registry()
    written: dict[tuple, int] = {}
    origins: dict[str, int] = {}
    for name, task in sorted(registry.tasks.items()):
        if (only and name not in only) or not task.source.hub or task.source.tables:
            continue
        hub_id, config = task.source.mirror_location()
        for split, rows in split_sizes(task, scale).items():
            key = (hub_id, config, split)
            if written.get(key, 0) >= rows:
                continue
            try:
                base, origin = base_rows(task, split, mirrors)
            except LookupError as e:
                print(f"mirror: skipped {e}", flush=True)
                continue
            origins[origin.split(" ")[0]] = origins.get(origin.split(" ")[0], 0) + 1
            folder = root / hub_id / config
            folder.mkdir(parents=True, exist_ok=True)
            pq.write_table(scaled(base, rows, _free_text(task, base)), folder / f"{split}.parquet", compression="zstd")
            written[key] = rows
    return {"files": len(written), "rows": sum(written.values()), "origins": origins}


def make_niv2(root: Path, niv2: Path, n_tasks: int) -> Path:
    """An NIv2 root with ``n_tasks`` tasks: the real task files, copied under new names, round robin."""
    real = sorted((niv2 / "tasks").glob("task*.json"))
    (root / "tasks").mkdir(parents=True, exist_ok=True)
    (root / "splits" / "default").mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n_tasks):
        src = real[i % len(real)]
        number, rest = src.stem[4:].split("_", 1)
        name = f"task{10_000 + i}_{rest}" if i >= len(real) else src.stem
        shutil.copyfile(src, root / "tasks" / f"{name}.json")
        names.append(name)
    test = set((niv2 / "splits/default/test_tasks.txt").read_text().split())
    (root / "splits/default/test_tasks.txt").write_text("\n".join(n for n in names if n in test) + "\n")
    (root / "splits/default/train_tasks.txt").write_text("\n".join(n for n in names if n not in test) + "\n")
    return root


# -- runs ---------------------------------------------------------------------------------------

def build_run(label: str, out: Path, data: Path, extra: list[str], env: dict, scale: float, mixture: str) -> dict:
    secs, peak, _ = run_measured(flanbuild(["--out", str(out), "--data-dir", str(data), "--mixture", mixture,
                                            "-q", *extra]), env)
    m = json.loads((out / "mixture.json").read_text())
    rows = m["counts"]["train"] + m["counts"]["eval"]
    engine = "dask" if "dask" in extra else "local"
    workers = extra[extra.index("--workers") + 1] if "--workers" in extra else "all"
    print(f"[{label}] {rows:,} rows ({m['counts']['train']:,} train, {m['counts']['eval']:,} eval, "
          f"{len(m['tasks'])} tasks, {len(m['skipped'])} skipped) in {secs:.1f}s: {rows / secs:,.0f} rows/s, "
          f"peak RSS {peak / 2**20:,.0f} MB, fingerprint {m['fingerprint'][:12]}", flush=True)
    print(f"bench_flan: mixture={mixture} scale={scale:g} engine={engine} workers={workers} rows={rows} "
          f"wall_s={secs:.2f} rows_per_s={rows / secs:.0f} peak_rss_mb={peak / 2**20:.0f}", flush=True)
    return {"rows": rows, "secs": secs, "peak": peak, "fingerprint": m["fingerprint"], "skipped": m["skipped"]}


def rebuilds(work: Path, data: Path, env: dict, workers: str, scale: float, select: list[str]) -> dict:
    """Cold build with the cache, unchanged rebuild, rebuild after one template changed (same OUT)."""
    cache_env = {**env, "FLANBUILD_CACHE": str(work / "cache")}
    shutil.rmtree(work / "cache", ignore_errors=True)
    out = work / "out-rebuild"
    common = ["--out", str(out), "--data-dir", str(data), "-q", "--workers", workers, *select]
    cold, _, _ = run_measured(flanbuild(common), cache_env)
    same, _, _ = run_measured(flanbuild(common), cache_env)
    edited = work / "edited-catalog"
    (edited / "templates").mkdir(parents=True, exist_ok=True)
    text = (REPO / "templates" / "glue_sst2.yaml").read_text()
    (edited / "templates" / "glue_sst2.yaml").write_text(
        text.replace("Is the reviewer's attitude", "Is the critic's attitude", 1).replace("task: glue_sst2\n", "task: glue_sst2\noverride: true\n", 1))
    one, _, _ = run_measured(flanbuild([*common, "--catalog", str(edited)]), cache_env)
    print(f"rebuilds (workers={workers}): cold {cold:.1f}s, unchanged {same:.1f}s ({same / cold:.0%} of cold), "
          f"one template changed {one:.1f}s ({one / cold:.0%} of cold)", flush=True)
    print(f"bench_flan_rebuild: scale={scale:g} workers={workers} cold_s={cold:.2f} unchanged_s={same:.2f} "
          f"one_template_s={one:.2f} one_template_share={one / cold:.3f}", flush=True)
    return {"cold": cold, "unchanged": same, "one_template": one, "out": out}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every split size (default 1: real sizes)")
    ap.add_argument("--workers", nargs="+", default=["1", "2"])
    ap.add_argument("--dask", action="store_true", help="also run on a local Dask cluster (largest --workers)")
    ap.add_argument("--rebuild", action="store_true", help="also time cold / unchanged / one-template rebuilds")
    ap.add_argument("--flan2022", action="store_true", help="also build flan2022 with NIv2 scaled up")
    ap.add_argument("--niv2-tasks", type=int, default=1600)
    ap.add_argument("--mirror", type=Path, default=Path(os.environ.get("FLANBUILD_DATA_DIR") or REPO.parent / "shared/data/hub"))
    ap.add_argument("--niv2", type=Path, default=REPO.parent / "shared/data/niv2")
    ap.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temporary one)")
    ap.add_argument("--tasks", default="", help="only these tasks (comma-separated; default: the whole catalog)")
    args = ap.parse_args(argv)
    only = tuple(t for t in args.tasks.split(",") if t)
    select = ["--tasks", ",".join(only)] if only else []
    work = args.work or Path(tempfile.mkdtemp(prefix="flanbuild-bench-flan-"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FLANBUILD_DATA_DIR": ""}
    try:
        data = work / "mirror"
        shutil.rmtree(data, ignore_errors=True)
        t0 = time.perf_counter()
        made = make_mirror(data, args.scale, [args.mirror] if args.mirror.is_dir() else [], only)
        print(f"mirror: {made['files']} split files, {made['rows']:,} rows (base rows from {made['origins']}) "
              f"in {time.perf_counter() - t0:.1f}s", flush=True)
        runs = [(f"flan2021, {w} worker(s)", ["--workers", w, "--no-cache", *select]) for w in args.workers]
        if args.dask:
            w = max(args.workers, key=int)
            runs.append((f"flan2021, dask {w} worker(s)", ["--workers", w, "--engine", "dask", "--no-cache", *select]))
        results = [build_run(label, work / f"out-{i}", data, extra, env, args.scale, "flan2021")
                   for i, (label, extra) in enumerate(runs)]
        print(f"same bytes across runs: {'yes' if len({r['fingerprint'] for r in results}) == 1 else 'NO'}", flush=True)
        if len(results) > 1:
            print(f"scaling: {results[0]['secs'] / results[1]['secs']:.2f}x with {args.workers[1]} vs "
                  f"{args.workers[0]} worker(s)", flush=True)
        if args.rebuild:
            rebuilds(work, data, env, max(args.workers, key=int), args.scale, select)
        if args.flan2022:
            niv2 = make_niv2(work / "niv2", args.niv2, args.niv2_tasks)
            w = max(args.workers, key=int)
            build_run(f"flan2022 + {args.niv2_tasks} NIv2 tasks, {w} worker(s)", work / "out-2022", data,
                      ["--workers", w, "--no-cache", "--niv2-dir", str(niv2)], env, args.scale, "flan2022")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
