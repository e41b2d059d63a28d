"""The paper-scale benchmark (bench/bench_flan.py) at a tiny scale: it builds, and its mirror is right."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent


def _bench():
    sys.path.insert(0, str(REPO / "bench"))
    spec = importlib.util.spec_from_file_location("bench_flan", REPO / "bench" / "bench_flan.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sizes_table_covers_the_catalog():
    from flanbuild.builder import load_registry

    bench = _bench()
    tasks = {n for n, t in load_registry().tasks.items() if t.source.hub}
    assert tasks <= set(bench.SIZES), sorted(tasks - set(bench.SIZES))


def test_mirror_sizes_follow_the_table_and_the_cap(tmp_path, mirror):
    bench = _bench()
    made = bench.make_mirror(tmp_path / "m", 0.01, [mirror], ("glue_sst2", "paracrawl_ende", "arc_easy"))
    assert made["files"] == 5  # SST-2 train + validation, ParaCrawl train (eval is carved from it), ARC-Easy train + test
    sst2 = pq.read_table(tmp_path / "m/nyu-mll/glue/sst2/train.parquet")
    assert sst2.num_rows == round(30_000 * 0.01)  # 67,349 capped at 30k, scaled
    assert sst2.column("sentence")[5].as_py().endswith(" [5]")  # free text varies; the label does not
    para = pq.read_table(tmp_path / "m/ParaCrawl/para_crawl/ende/train.parquet")
    assert para.num_rows == 1000 + 300  # the carved eval rows plus the capped, scaled train rows


def test_tiny_benchmark_builds_end_to_end(tmp_path, mirror, capsys):
    bench = _bench()
    assert bench.main(["--scale", "0.002", "--workers", "1", "--work", str(tmp_path), "--mirror", str(mirror),
                       "--tasks", "glue_sst2,glue_cola,super_glue_rte,anli_r1"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("bench_flan: "))
    fields = dict(kv.split("=") for kv in line.split()[1:])
    m = json.loads((tmp_path / "out-0" / "mixture.json").read_text())
    assert int(fields["rows"]) == m["counts"]["train"] + m["counts"]["eval"] > 0
    assert set(m["tasks"]) == {"glue_sst2", "glue_cola", "super_glue_rte", "anli_r1"}
    assert not m["skipped"]
