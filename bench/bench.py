"""flanbuild benchmark: throughput and memory against a minimal reference pipeline, plus rebuild times.

    python bench/bench.py [--rows 1000000 5000000] [--mirror ../shared/data/hub] [--work DIR]

For each size it generates a scaled input from real mirror rows (GLUE SST-2 train, each row repeated
with an index suffix), then measures on the same rows and the same template:
  reference   pyarrow batches -> to_pylist -> one precompiled Jinja template (input and target)
              -> zstd ParquetWriter, in one process;
  flanbuild   `flanbuild build` with 1 worker, with all workers, and with the Dask engine;
peak memory is the summed RSS of the whole process tree. Then it times a cold build of the default
mixture and an incremental rebuild after one template changed. It ends with one summary line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
TEMPLATE_INPUT = ('Sentence from a movie review: "{{sentence}}"\nIs the reviewer\'s attitude positive or negative?'
                  "\n\n{{options_block}}")
TEMPLATE_TARGET = "{{answer}}"
CARD = """name: bench_sst2
cluster: sentiment
description: SST-2 train rows repeated with an index suffix, for benchmarks.
source:
  hub: bench/sst2_scaled
  config: default
  splits: {{train: train}}
features: {{sentence: string, label: {{class_label: [negative, positive]}}, idx: int32}}
fields: {{sentence: sentence}}
type: classification
options: [negative, positive]
answer: label
"""


def make_input(mirror: Path, rows: int, root: Path) -> Path:
    """A mirror-layout dataset of `rows` rows (Parquet shards of 500k rows) and a one-task catalog."""
    src = pq.read_table(mirror / "nyu-mll/glue/sst2/train.parquet")
    out = root / "data" / "bench/sst2_scaled/default"
    out.mkdir(parents=True, exist_ok=True)
    sentences, labels = src.column("sentence").to_pylist(), src.column("label").to_pylist()
    shard, written = 0, 0
    while written < rows:
        n = min(500_000, rows - written)
        ids = range(written, written + n)
        table = pa.table({
            "sentence": [f"{sentences[i % len(sentences)]} ({i})" for i in ids],
            "label": pa.array([labels[i % len(labels)] for i in ids], pa.int64()),
            "idx": pa.array(list(ids), pa.int32()),
        }).replace_schema_metadata(src.schema.metadata)
        pq.write_table(table, out / f"train-{shard:05d}.parquet", compression="zstd")
        written += n
        shard += 1
    catalog = root / "catalog"
    (catalog / "tasks").mkdir(parents=True, exist_ok=True)
    (catalog / "templates").mkdir(parents=True, exist_ok=True)
    (catalog / "tasks" / "bench_sst2.yaml").write_text(CARD.format())
    (catalog / "templates" / "bench_sst2.yaml").write_text(
        "task: bench_sst2\ntemplates:\n  - id: 1\n    input: " + json.dumps(TEMPLATE_INPUT) +
        "\n    target: " + json.dumps(TEMPLATE_TARGET) + "\n")
    return root / "data"


def reference(data: Path, out: Path) -> float:
    """The minimal pipeline of the issue, in this process: returns rows/s."""
    import jinja2

    env = jinja2.Environment()
    tin, tout = env.from_string(TEMPLATE_INPUT), env.from_string(TEMPLATE_TARGET)
    names = ["negative", "positive"]
    block = "OPTIONS:\n- negative\n- positive"
    schema = pa.schema([("inputs", pa.string()), ("targets", pa.string())])
    files = sorted((data / "bench/sst2_scaled/default").glob("*.parquet"))
    start, n = time.perf_counter(), 0
    with pq.ParquetWriter(out, schema, compression="zstd") as writer:
        for f in files:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=4096):
                rows = batch.to_pylist()
                ins, outs = [], []
                for row in rows:
                    ctx = {"sentence": row["sentence"], "answer": names[row["label"]], "options_block": block}
                    ins.append(tin.render(ctx))
                    outs.append(tout.render(ctx))
                writer.write_table(pa.table({"inputs": ins, "targets": outs}, schema=schema))
                n += len(rows)
    return n / (time.perf_counter() - start)


def _tree_rss(pid: int) -> int:
    """Summed resident memory (bytes) of a process and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        total += rss.get(p, 0)
        stack.extend(children.get(p, []))
    return total


def run_measured(cmd: list[str], env: dict) -> tuple[float, int, str]:
    """(seconds, peak tree RSS in bytes, stderr) of a command."""
    peak = 0
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = threading.Event()

    def watch():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_rss(proc.pid))
            time.sleep(0.05)

    t = threading.Thread(target=watch, daemon=True)
    start = time.perf_counter()
    t.start()
    out, err = proc.communicate()
    seconds = time.perf_counter() - start
    done.set()
    t.join()
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{err[-2000:]}")
    return seconds, peak, err


def flanbuild(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "flanbuild", "build", *args]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    ap.add_argument("--mirror", type=Path, default=Path(os.environ.get("FLANBUILD_DATA_DIR") or REPO.parent / "shared/data/hub"))
    ap.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temporary one)")
    ap.add_argument("--no-dask", action="store_true")
    args = ap.parse_args()
    if not (args.mirror / "nyu-mll/glue/sst2/train.parquet").is_file():
        print(f"bench: the data mirror is needed ({args.mirror}); set FLANBUILD_DATA_DIR", file=sys.stderr)
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="flanbuild-bench-"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FLANBUILD_CACHE": str(work / "cache")}
    cores = os.cpu_count() or 1
    summary = {}
    for rows in args.rows:
        root = work / f"rows{rows}"
        shutil.rmtree(root, ignore_errors=True)
        t0 = time.perf_counter()
        data = make_input(args.mirror, rows, root)
        print(f"[{rows} rows] input generated in {time.perf_counter() - t0:.1f}s", flush=True)
        ref = reference(data, root / "reference.parquet")
        print(f"[{rows} rows] reference pipeline: {ref:,.0f} rows/s", flush=True)
        common = ["--data-dir", str(data), "--catalog", str(root / "catalog"), "--tasks", "bench_sst2,super_glue_rte",
                  "--heldout", "nli", "--task-cap", "0", "--rate-cap", "0", "--no-cache", "-q"]
        env_b = {**env, "FLANBUILD_DATA_DIR": f"{data}{os.pathsep}{args.mirror}"}
        results = {}
        engines = [("1 worker", ["--workers", "1"]), (f"{cores} workers", ["--workers", str(cores)])]
        if not args.no_dask:
            engines.append((f"dask, {cores} workers", ["--workers", str(cores), "--engine", "dask"]))
        for label, extra in engines:
            out = root / f"out-{label.replace(' ', '_').replace(',', '')}"
            secs, peak, _ = run_measured(flanbuild(["--out", str(out), *common, *extra, "--data-dir", str(args.mirror)]), env_b)
            m = json.loads((out / "mixture.json").read_text())
            n = m["tasks"]["bench_sst2"]["rows"]
            results[label] = (n / secs, peak, m["fingerprint"], secs)
            print(f"[{rows} rows] flanbuild {label}: {n / secs:,.0f} rows/s ({secs:.1f}s wall, incl. start-up), "
                  f"ratio to reference {n / secs / ref:.2f}, peak RSS {peak / 2**20:,.0f} MB, "
                  f"fingerprint {m['fingerprint'][:12]}", flush=True)
        prints = {v[2] for v in results.values()}
        print(f"[{rows} rows] same bytes across engines: {'yes' if len(prints) == 1 else 'NO'}", flush=True)
        one = results["1 worker"][0]
        allw = results[f"{cores} workers"]
        print(f"[{rows} rows] scaling: {allw[0] / one:.2f}x with {cores} workers", flush=True)
        if not args.no_dask:
            d = results[f"dask, {cores} workers"]
            print(f"[{rows} rows] dask time / local time: {d[3] / allw[3]:.2f}", flush=True)
        summary = {"rows": rows, "workers": cores, "rows_per_s": allw[0], "reference": ref, "peak": allw[1]}

    # cold and incremental build of the default mixture
    mix_env = {**env, "FLANBUILD_CACHE": str(work / "mix-cache")}
    for stale in ("mix-cache", "mix-cold", "mix-warm", "mix-incr"):  # a reused --work holds the last run's
        shutil.rmtree(work / stale, ignore_errors=True)
    base = ["--data-dir", str(args.mirror), "-q"]
    cold, _, _ = run_measured(flanbuild(["--out", str(work / "mix-cold"), *base]), mix_env)
    warm, _, _ = run_measured(flanbuild(["--out", str(work / "mix-warm"), *base]), mix_env)
    edited = work / "edited-catalog"
    (edited / "templates").mkdir(parents=True, exist_ok=True)
    text = (REPO / "templates" / "glue_sst2.yaml").read_text().replace("Is the reviewer's attitude", "Is the critic's attitude", 1)
    text = text.replace("task: glue_sst2\n", "task: glue_sst2\noverride: true\n", 1)  # replacing a built-in entry is explicit
    (edited / "templates" / "glue_sst2.yaml").write_text(text)
    incr, _, _ = run_measured(flanbuild(["--out", str(work / "mix-incr"), *base, "--catalog", str(edited)]), mix_env)
    print(f"default mixture: cold build {cold:.1f}s, unchanged rebuild {warm:.1f}s, rebuild after one template "
          f"changed {incr:.1f}s ({incr / cold:.0%} of cold)", flush=True)
    print(f"bench: rows={summary['rows']} workers={summary['workers']} rows_per_s={summary['rows_per_s']:.0f} "
          f"reference_rows_per_s={summary['reference']:.0f} ratio={summary['rows_per_s'] / summary['reference']:.2f} "
          f"peak_rss_mb={summary['peak'] / 2**20:.0f}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
