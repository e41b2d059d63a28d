#!/usr/bin/env python3
"""Regenerate the embedded default sample (flanbuild/sample/) from a data mirror.

    python tools/make_sample.py --mirror ../shared/data/hub [--out flanbuild/sample]

The sample is a few hundred real rows per split of the datasets in ``DATASETS`` below: only datasets whose
licence allows redistribution (each one checked against the licence the mirror's ``manifest.json`` states),
chosen to cover every FLAN cluster for which the mirror holds such data. Layout as the mirror:
``<hub id>/<config>/<split>.parquet`` (zstd, with the ``huggingface`` schema metadata, so ClassLabel names
survive), plus ``sources.json`` (read by the dataset card) and ``SOURCES.md`` (for people).

Deterministic: the rows of a split are the ``ROWS[role]`` row indices with the smallest SHA-256 of
``"<hub id>/<config>/<split>/<index>"``, kept in source order. Running it twice writes the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent

# Rows per split, by the role the split plays for the catalog's tasks.
ROWS = {"train": 300, "eval": 200}

# (hub id, config) -> (SPDX licence, a word that must occur in the mirror's stated licence, why it may be shipped).
# Only licences that allow redistribution: MIT, Apache-2.0, BSD-2-Clause, AFL-3.0, CC BY, CC BY-SA.
DATASETS: dict[tuple[str, str], tuple[str, str, str]] = {
    ("nyu-mll/glue", "qnli"): ("cc-by-sa-4.0", "CC BY-SA 4.0", "QNLI is derived from SQuAD v1.1 (CC BY-SA 4.0)"),
    ("nyu-mll/glue", "wnli"): ("cc-by-4.0", "CC BY 4.0", "WNLI is derived from the Winograd Schema Challenge (CC BY 4.0)"),
    ("allenai/openbookqa", "main"): ("apache-2.0", "Apache 2.0", "OpenBookQA: Apache 2.0"),
    ("google/boolq", "default"): ("cc-by-sa-3.0", "CC BY-SA 3.0", "BoolQ: CC BY-SA 3.0"),
    ("allenai/cosmos_qa", "default"): ("cc-by-4.0", "CC BY 4.0", "Cosmos QA: CC BY 4.0"),
    ("allenai/ai2_arc", "ARC-Challenge"): ("cc-by-sa-4.0", "CC BY-SA 4.0", "ARC: CC BY-SA 4.0"),
    ("google-research-datasets/nq_open", "nq_open"): ("cc-by-sa-3.0", "CC BY-SA 3.0", "Natural Questions: CC BY-SA 3.0"),
    ("aps/super_glue", "copa"): ("bsd-2-clause", "BSD 2-clause", "COPA: BSD 2-Clause"),
    ("ybisk/piqa", "plain_text"): ("afl-3.0", "AFL 3.0", "PIQA: Academic Free License 3.0"),
    ("aps/super_glue", "wsc"): ("cc-by-4.0", "CC BY 4.0", "WSC: CC BY 4.0"),
    ("ErnestSDavis/winograd_wsc", "wsc273"): ("cc-by-4.0", "CC BY 4.0", "Winograd Schema Challenge: CC BY 4.0"),
    ("allenai/common_gen", "default"): ("mit", "MIT", "CommonGen: MIT"),
    ("Yale-LILY/dart", "default"): ("mit", "MIT", "DART: MIT"),
    ("tuetschek/e2e_nlg", "default"): ("cc-by-sa-4.0", "CC BY-SA 4.0", "E2E NLG: CC BY-SA 4.0"),
    ("openai/gsm8k", "main"): ("mit", "MIT", "GSM8K: MIT"),
    ("deepmind/aqua_rat", "raw"): ("apache-2.0", "Apache 2.0", "AQuA-RAT: Apache 2.0"),
    ("wics/strategy-qa", "strategyQA"): ("mit", "MIT", "StrategyQA: MIT"),
}


CLUSTERS: dict[str, str] = {}  # task -> its catalog cluster


def pick(n_rows: int, k: int, key: str) -> list[int]:
    """``k`` row indices of ``n_rows``, chosen by hash rank (stable everywhere), in source order."""
    if n_rows <= k:
        return list(range(n_rows))
    ranked = sorted(range(n_rows), key=lambda i: hashlib.sha256(f"{key}/{i}".encode()).digest())
    return sorted(ranked[:k])


def wanted_splits() -> dict[tuple[str, str], dict[str, tuple[str, list[str]]]]:
    """(hub, config) -> split -> (role, tasks using it), from the built-in catalog."""
    sys.path.insert(0, str(REPO))
    from flanbuild.catalog.registry import Registry, builtin_catalog_dir

    registry = Registry()
    registry.load_catalog(builtin_catalog_dir())
    out: dict[tuple[str, str], dict[str, tuple[str, list[str]]]] = {}
    CLUSTERS.update({name: task.cluster for name, task in registry.tasks.items()})
    for name, task in sorted(registry.tasks.items()):
        src = task.source
        location = src.mirror_location() if hasattr(src, "mirror_location") else (src.hub, src.config)
        if location not in DATASETS:
            continue
        for role in src.splits:
            split = src.base_split(role) if hasattr(src, "base_split") else src.splits[role]
            splits = out.setdefault(location, {})
            prev_role, users = splits.get(split, (role, []))
            splits[split] = ("train" if "train" in (role, prev_role) else "eval", [*users, name])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mirror", type=Path, required=True, help="the data mirror (<hub id>/<config>/<split>.parquet)")
    ap.add_argument("--out", type=Path, default=REPO / "flanbuild" / "sample")
    args = ap.parse_args(argv)
    manifest_path = args.mirror / "manifest.json"
    if not manifest_path.is_file():
        manifest_path = args.mirror.parent / "manifest.json"
    stated = {(d["hub_id"], d["config"]): d for d in json.loads(manifest_path.read_text())["datasets"]}

    for child in ("sources.json", "SOURCES.md"):
        (args.out / child).unlink(missing_ok=True)
    for child in sorted(args.out.iterdir()) if args.out.is_dir() else ():
        if child.is_dir():
            shutil.rmtree(child)
    args.out.mkdir(parents=True, exist_ok=True)

    records = []
    for (hub, config), splits in sorted(wanted_splits().items()):
        spdx, must_say, why = DATASETS[(hub, config)]
        info = stated.get((hub, config))
        if info is None:
            print(f"skip {hub}/{config}: not in the mirror's manifest", file=sys.stderr)
            continue
        if must_say.lower() not in info["license"].lower():
            raise SystemExit(f"{hub}/{config}: the mirror states licence {info['license']!r}, expected {must_say!r}")
        written = {}
        for split, (role, users) in sorted(splits.items()):
            src = args.mirror / hub / config / f"{split}.parquet"
            if not src.is_file():
                continue
            table = pq.read_table(src)
            rows = pick(table.num_rows, ROWS[role], f"{hub}/{config}/{split}")
            sample = table.take(pa.array(rows, pa.int64()))
            dest = args.out / hub / config / f"{split}.parquet"
            dest.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(sample, dest, compression="zstd", compression_level=19, row_group_size=len(rows) or 1)
            written[split] = {"rows": len(rows), "of": table.num_rows, "role": role, "tasks": users}
        if not written:
            continue
        records.append({
            "hub_id": hub, "config": config, "license": spdx, "license_stated": info["license"], "why": why,
            "source_repo": f"https://github.com/{info['source_repo']}", "source_commit": info["source_commit"],
            "clusters": sorted({CLUSTERS[t] for v in written.values() for t in v["tasks"]}), "splits": written,
        })
    (args.out / "sources.json").write_text(json.dumps({
        "description": "Embedded default sample of flanbuild: real rows of redistributable datasets, "
                       "regenerated by tools/make_sample.py",
        "rows_per_split": ROWS, "selection": "smallest SHA-256 of '<hub id>/<config>/<split>/<row index>', source order kept",
        "datasets": records}, indent=1, sort_keys=True) + "\n")
    (args.out / "SOURCES.md").write_text(_markdown(records))
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    n_rows = sum(s["rows"] for r in records for s in r["splits"].values())
    print(f"wrote {args.out}: {len(records)} datasets, {n_rows} rows, {total / 1e6:.2f} MB")
    return 0


def _markdown(records: list[dict]) -> str:
    lines = [
        "# The embedded default sample", "",
        "Real rows of public datasets, shipped inside the package so that a build works with no data mirror and",
        "no network (`make mixture` then says `demo mixture from the embedded sample`). Only datasets whose",
        "licence allows redistribution are included; each keeps its own licence (below), and any use of these",
        "rows must follow it (attribution; ShareAlike for the CC BY-SA ones). Rows come from the project's",
        "offline mirror, which rebuilt each dataset from the public repository named here.",
        "Regenerate with `python tools/make_sample.py --mirror ../shared/data/hub`.", "",
        "FLAN clusters with no redistributable data in the mirror (paraphrase: MRPC/STS-B terms; sentiment:",
        "SST/IMDB/TweetEval terms; summarization: AESLC unstated, AG News non-commercial; translation: Multi30k",
        "research use) are not in the sample.", "",
        "| hub id / config | cluster | licence (SPDX) | licence as stated | splits: rows (of) | tasks | source |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in records:
        splits = "<br>".join(f"{s}: {v['rows']} ({v['of']})" for s, v in r["splits"].items())
        tasks = ", ".join(sorted({t for v in r["splits"].values() for t in v["tasks"]}))
        lines.append(f"| `{r['hub_id']}` / `{r['config']}` | {', '.join(r['clusters'])} | {r['license']} | {r['license_stated']} "
                     f"| {splits} | {tasks} | [{r['source_repo'].split('github.com/')[-1]}]({r['source_repo']}) "
                     f"@ `{r['source_commit'][:12]}` |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
