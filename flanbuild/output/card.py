"""The dataset card (``OUT/README.md``): a Hugging Face card that says what the mixture is.

Its YAML ``configs:`` block is what makes ``datasets.load_dataset(OUT)`` return exactly the splits
``train`` and ``eval`` (without it, split names are guessed from file names), and its ``dataset_info``
(exact row counts and file sizes) is what keeps ``datasets`` from serving a stale cache after a rebuild.

``render_card(manifest)`` writes the card from ``mixture.json`` alone. ``write_card(out_dir, manifest,
tasks, tokenizer)`` is what a build calls: it streams the split Parquet files once (``stats.scan``),
draws the two pictures next to the card (``plots``) and writes README.md with the composition and
length tables, template types, rendered examples, sources and licenses and loading recipes. Same
build, same bytes: README.md and the PNGs are deterministic (no dates, no timings).
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from concurrent.futures import Future

    from flanbuild.output.stats import MixtureStats

SIZE_CATEGORIES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]
EXAMPLE_MAX_CHARS = 1_200  # longer inputs/targets are cut in the card's examples
FLAN_PAPER = "https://arxiv.org/abs/2109.01652"


# -- Markdown helpers -----------------------------------------------------------------------------

def md(text: object) -> str:
    """Plain text safe in Markdown prose and table cells: one line, no HTML, no stray emphasis/links."""
    s = " ".join(str(text).split())
    s = html.escape(s, quote=False)
    return re.sub(r"([\\`*\[\]|])", r"\\\1", s)


def code(text: object) -> str:
    """An inline code span (``text`` has no backticks or newlines in practice; made safe anyway)."""
    s = " ".join(str(text).split()).replace("|", "\\|")
    fence = "``" if "`" in s else "`"
    pad = " " if s.startswith("`") or s.endswith("`") else ""
    return f"{fence}{pad}{s}{pad}{fence}"


def _table(header: list[str], rows: list[list[object]], align: str = "") -> str:
    """A pipe table. Cells are used as given (callers escape them with :func:`md`/:func:`code`).

    ``align``: one letter per column, ``l`` or ``r`` (default all left).
    """
    seps = ["---:" if a == "r" else "---" for a in (align or "l" * len(header)).ljust(len(header), "l")]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(seps) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _fenced(text: str, lang: str = "text") -> str:
    """A fenced code block that cannot be closed early by backticks inside ``text``."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{text}\n{fence}"


def _pct(x: float) -> str:
    return f"{x:.1%}"


def _n(x: int | float) -> str:
    return f"{x:,}" if isinstance(x, int) else f"{x:,.1f}"


# -- YAML -----------------------------------------------------------------------------------------

def hf_features(schema) -> list[dict]:
    """An Arrow schema as Hugging Face ``dataset_info.features`` (the card YAML's structure)."""
    import pyarrow as pa

    def one(name: str, typ) -> dict:
        if pa.types.is_list(typ) or pa.types.is_large_list(typ):
            inner = typ.value_type
            if pa.types.is_struct(inner):
                return {"name": name, "list": [one(f.name, f.type) for f in inner]}
            return {"name": name, "list": _dtype(inner)}
        if pa.types.is_struct(typ):
            return {"name": name, "struct": [one(f.name, f.type) for f in typ]}
        return {"name": name, "dtype": _dtype(typ)}

    return [one(f.name, f.type) for f in schema]


def _dtype(typ) -> str:
    import pyarrow as pa

    if pa.types.is_large_string(typ):
        return "large_string"
    return str(typ)


def size_category(n: int) -> str:
    for limit, name in SIZE_CATEGORIES:
        if n < limit:
            return name
    return "n>1B"


def dataset_yaml(split_files: dict[str, list[dict]], features: list[dict], *, pretty_name: str,
                 rows: dict[str, int], **card_data) -> str:
    """The YAML header of a card for the splits in ``split_files`` ({split: [{path, bytes}]}).

    Built with ``huggingface_hub.DatasetCardData`` (what the Hub validates). ``configs`` maps each split
    to its files, so ``load_dataset(folder)`` gives exactly these splits; ``dataset_info`` has the exact
    row counts and byte sizes, which ``datasets`` hashes into its cache key for a local folder (a rebuilt
    folder gets a fresh cache entry). ``card_data``: more fields (license, language, source_datasets...).
    """
    from huggingface_hub import DatasetCardData

    split_files = {s: files for s, files in split_files.items() if rows.get(s, 0) > 0}  # an empty split is left out
    split_bytes = {s: sum(f["bytes"] for f in files) for s, files in split_files.items()}
    total = sum(split_bytes.values())
    data = DatasetCardData(
        pretty_name=pretty_name,
        size_categories=[size_category(sum(rows.values()))],
        task_categories=card_data.pop("task_categories", ["text-generation"]),
        tags=["flan", "instruction-tuning", "flanbuild"],
        configs=[{"config_name": "default",
                  "data_files": [{"split": s, "path": _pattern(s, files)} for s, files in split_files.items()]}],
        dataset_info={"config_name": "default", "features": features,
                      "splits": [{"name": s, "num_bytes": split_bytes[s], "num_examples": rows[s]} for s in split_files],
                      "download_size": total, "dataset_size": total},
        **card_data,
    )
    return f"---\n{data.to_yaml()}\n---"


def _pattern(split: str, files: list[dict]) -> str:
    """The glob of a split's files: ``data/train-*`` (build layout) or ``data/train/*`` (exports)."""
    paths = [f["path"] for f in files]
    if paths and all(p.startswith(f"data/{split}/") for p in paths):
        return f"data/{split}/*"
    return f"data/{split}-*"


def _yaml_header(manifest: dict, tasks: dict | None = None) -> str:
    """The card's YAML: the split layout, exact row counts and file sizes, and what the Hub shows
    about the mixture (licences, languages, source datasets, task categories), from the tasks in it.

    ``datasets`` caches a local folder under a key computed from this YAML, not from the files; the
    sizes make a rebuilt mixture get a fresh cache entry instead of the previous build's rows, and the
    row counts are verified by ``load_dataset``.
    """
    from flanbuild.pipeline.render import OUTPUT_SCHEMA

    files = {s: [f for f in manifest["files"] if f["path"].startswith(f"data/{s}-")] for s in ("train", "eval")}
    used = {name: (tasks or {}).get(name) for name in manifest["tasks"]}
    licenses = sorted({_license_id((t.license if t is not None else "") or "") for t in used.values()})
    return dataset_yaml(files, hf_features(OUTPUT_SCHEMA), rows=manifest["counts"],
                        pretty_name=f"FLAN-style instruction-tuning mixture ({manifest['config']['mixture']})",
                        license=licenses, language=_languages(manifest, used),
                        source_datasets=sorted({f"extended|{t.source.hub}" for t in used.values()
                                                if t is not None and t.source.hub}) or None,
                        task_categories=sorted({"text-generation"} | {CLUSTER_CATEGORIES.get(e["cluster"], "text-generation")
                                                                      for e in manifest["tasks"].values()}))


# Hugging Face task categories of the FLAN clusters (what a Hub search filters on).
CLUSTER_CATEGORIES = {
    "nli": "text-classification", "paraphrase": "text-classification", "sentiment": "text-classification",
    "coreference": "text-classification", "misc": "text-classification",
    "reading_comprehension": "question-answering", "reading_comprehension_commonsense": "question-answering",
    "closed_book_qa": "question-answering", "chain_of_thought": "question-answering",
    "commonsense": "multiple-choice", "summarization": "summarization", "translation": "translation",
    "struct_to_text": "text-generation", "dialog": "text-generation",
}
# Licence strings of the task cards -> Hugging Face licence ids; anything else is "other".
_LICENSES = [(r"\bcc[- ]by[- ]sa[- ]?4", "cc-by-sa-4.0"), (r"\bcc[- ]by[- ]sa[- ]?3", "cc-by-sa-3.0"),
             (r"\bcc[- ]by[- ]nc[- ]sa[- ]?4", "cc-by-nc-sa-4.0"), (r"\bcc[- ]by[- ]nc[- ]?4", "cc-by-nc-4.0"),
             (r"\bcc[- ]by[- ]?4", "cc-by-4.0"), (r"\bcc[- ]by[- ]?3", "cc-by-3.0"), (r"\bmit\b", "mit"),
             (r"\bapache[- ]?(license )?2", "apache-2.0"), (r"\bbsd[- ]2", "bsd-2-clause"), (r"\bafl[- ]?3", "afl-3.0"),
             (r"\bcc0\b", "cc0-1.0")]


def _license_id(text: str) -> str:
    t = text.lower()
    return next((lid for pattern, lid in _LICENSES if re.search(pattern, t)), "other")


def _languages(manifest: dict, used: dict) -> list[str]:
    """English, plus the other side of every translation task (from its Hub config, e.g. ``de-en``)."""
    langs = {"en"}
    for name, entry in manifest["tasks"].items():
        task = used.get(name)
        if entry["cluster"] == "translation" and task is not None:
            langs |= {p for p in re.split(r"[-_]", task.source.config) if re.fullmatch(r"[a-z]{2}", p)}
    return sorted(langs)


# -- the card -------------------------------------------------------------------------------------

def _task_source(name: str, entry: dict, task) -> tuple[str, str, str]:
    """(dataset cell, license cell, homepage URL or "") of a task."""
    if task is not None and task.source.hub and not entry.get("source", "").startswith("file:"):
        hub, config = task.source.hub, task.source.config
        dataset = f"[{md(hub)}](https://huggingface.co/datasets/{hub}) / {code(config)}"
    else:
        origin = entry.get("source", "")
        kind, _, rest = origin.partition(":")
        if kind == "file":
            dataset = f"local file {code(Path(rest).name)}"
        elif rest:
            dataset = code(rest)
        else:
            dataset = code(origin or "unknown")
    licence = md(task.license) if task is not None and task.license else "not stated"
    homepage = ""
    if task is not None and task.homepage:
        url = str(task.homepage).strip().replace(" ", "%20").replace("(", "%28").replace(")", "%29")
        homepage = url if url.startswith(("http://", "https://")) else ""
    return dataset, licence, homepage


def render_card(manifest: dict, tasks: dict | None = None, stats=None, images: dict[str, str] | None = None) -> str:
    """The card's Markdown from a build's ``mixture.json`` content.

    ``tasks`` (name -> Task, e.g. ``registry.tasks``) adds descriptions, licenses, homepages and inverted
    template counts; ``stats`` (a :class:`flanbuild.output.stats.MixtureStats`) adds template types, length
    statistics and examples; ``images`` ({"composition": file, "lengths": file}) embeds the pictures.
    Without them the card has the parts that ``mixture.json`` alone can tell.
    """
    tasks = tasks or {}
    images = images or {}
    cfg = manifest["config"]
    counts = manifest["counts"]
    entries = manifest["tasks"]
    train = {n: t for n, t in entries.items() if t["role"] == "train"}
    evals = {n: t for n, t in entries.items() if t["role"] == "eval"}
    clusters = sorted({t["cluster"] for t in entries.values()})
    name = cfg["mixture"]
    parts = [
        _yaml_header(manifest, tasks),
        "",
        f"# FLAN-style instruction-tuning mixture: {md(name)}",
        "",
        "Natural-language instructions wrapped around existing NLP datasets, in the style of "
        f"[*Finetuned Language Models Are Zero-Shot Learners*]({FLAN_PAPER}) (FLAN, Wei et al., 2021): each "
        "task is phrased through about ten instruction templates, and whole task clusters are held out so "
        "that a model trained on **train** can be evaluated zero-shot on **eval**.",
        "",
        _table(["split", "rows", "tasks", "clusters", "what it is"], [
            ["train", _n(counts["train"]), len(train), len({t["cluster"] for t in train.values()}),
             "the training clusters, examples-proportional mix, one template per example, tasks interleaved "
             "evenly through the file"],
            ["eval", _n(counts["eval"]), len(evals), len({t["cluster"] for t in evals.values()}),
             "the held-out cluster(s): every example rendered with every template"],
        ], "lrrrl"),
        "",
        "## How it was made",
        "",
        "Built by flanbuild from task cards and instruction templates:",
        "",
        _fenced(manifest.get("command") or "flanbuild build", "bash"),
        "",
        _table(["setting", "value"], _settings(manifest)),
        "",
        "`mixture.json` next to this card has the full resolved configuration, the per-task rates and "
        "counts, the skipped tasks and a SHA-256 of every data file. The same command and seed give "
        "byte-identical files.",
        "",
    ]
    parts += _composition(manifest, tasks, stats, images, clusters)
    if stats is not None:
        parts += _lengths(stats, images, clusters)
        parts += _examples(stats, entries)
    parts += _sources(entries, tasks)
    if manifest.get("skipped"):
        parts += _skipped(manifest, tasks)
    parts += _columns_and_loading(manifest)
    return "\n".join(parts)


# config keys shown with their own label (others are listed generically; paths are left out)
_PATH_KEYS = {"data_dirs", "catalogs", "mixture_file", "niv2_dir", "promptsource_dir"}
_SHOWN_KEYS = {"mixture", "seed", "heldout", "removed_clusters", "extra_removals", "task_cap_override",
               "rate_cap_override", "submixtures",
               "temperature", "task_weights", "cluster_weights", "train_size", "eval_cap", "tasks", "strict",
               "shard_rows", "overrides"}


def _cap(override: int | None, submixtures: list[dict], key: str) -> str:
    """A cap as the build applied it: the command-line override, else each submixture's own."""
    if override is not None:
        return _n(override) if override else "no cap"
    caps = [f"{s['name']}: {_n(s[key]) if s.get(key) else 'no cap'}" for s in submixtures]
    return ", ".join(caps) or "no cap"


def _override_rows(cfg: dict) -> list[list[str]]:
    """Built-in clusters/tasks/templates a --catalog replaced (``override: true`` in the catalog)."""
    if not cfg.get("overrides"):
        return []
    return [["replaced by a catalog (override: true)",
             ", ".join(f"{o.get('kind', '')} {code(o.get('name', ''))}" for o in cfg["overrides"])]]


def _settings(manifest: dict) -> list[list[str]]:
    """The "How it was made" rows: the main choices first, then every other setting of mixture.json."""
    cfg = manifest["config"]
    weights = {**cfg.get("task_weights", {}), **cfg.get("cluster_weights", {})}
    rows = [
        ["held-out cluster(s) (eval)", ", ".join(code(c) for c in cfg.get("heldout", [])) or "none"],
        ["also removed from train" + (" (FLAN's extra removals)" if cfg.get("extra_removals", True) else ""),
         ", ".join(code(c) for c in cfg.get("removed_clusters", [])) or "none"],
        ["tasks removed with them", ", ".join(code(t) for t in manifest.get("removed_tasks", [])) or "none"],
        ["seed", str(cfg.get("seed", 0))],
        ["flanbuild version", code(manifest.get("versions", {}).get("flanbuild", "unknown"))],
    ]
    for label, key in (("examples per task (cap)", "task_cap"), ("mixing-rate cap", "rate_cap")):
        rows.append([label, _cap(cfg.get(f"{key}_override"), cfg.get("submixtures", []), key)])
    rows += [
        ["temperature", str(cfg.get("temperature", 1.0))],
        ["task / cluster weights", md(", ".join(f"{k}={v}" for k, v in weights.items())) or "none"],
        ["train size", _n(cfg["train_size"]) if cfg.get("train_size") else "sum of the capped rates"],
        ["eval examples per task (cap)", _n(cfg["eval_cap"]) if cfg.get("eval_cap") else "all"],
    ]
    if cfg.get("tasks"):
        rows.append(["tasks asked for", ", ".join(code(t) for t in cfg["tasks"])])
    rows += _override_rows(cfg)
    for key, value in cfg.items():
        if key in _SHOWN_KEYS or key in _PATH_KEYS or value in (None, [], {}, ""):
            continue
        rows.append([code(key), code(json.dumps(value, ensure_ascii=False))])
    rows.append(["content fingerprint", code(manifest["fingerprint"])])
    return rows


def _composition(manifest, tasks, stats, images, clusters) -> list[str]:
    out = ["## Composition", ""]
    if "composition" in images:
        out += [f"![Train composition by cluster and task]({images['composition']})", ""]
    out += ["### Clusters", "", _cluster_table(manifest, clusters), ""]
    out += ["### Tasks", "",
            "`examples`: distinct source examples; `rows`: rendered rows (train repeats an example only when a "
            "task is upsampled; eval renders each example with every template). Template types: `zs_opt` rows "
            "show the answer options, `zs_noopt` rows do not (generation tasks and inverted templates); `fs_*` "
            "rows are few-shot.",
            "",
            _task_table(manifest, tasks, stats), ""]
    return out


def _cluster_table(manifest, clusters) -> str:
    counts, entries = manifest["counts"], manifest["tasks"]
    rows = []
    for c in clusters:
        tr = [t for t in entries.values() if t["cluster"] == c and t["role"] == "train"]
        ev = [t for t in entries.values() if t["cluster"] == c and t["role"] == "eval"]
        tr_rows, ev_rows = sum(t["rows"] for t in tr), sum(t["rows"] for t in ev)
        rows.append([code(c), "eval (held out)" if ev else "train", len(tr) + len(ev),
                     _n(tr_rows) if tr else "", _pct(tr_rows / counts["train"]) if tr and counts["train"] else "",
                     _n(ev_rows) if ev else "", _pct(ev_rows / counts["eval"]) if ev and counts["eval"] else ""])
    return _table(["cluster", "split", "tasks", "train rows", "train share", "eval rows", "eval share"], rows, "llrrrrr")


def _task_table(manifest, tasks, stats) -> str:
    """One row per task: examples, rows, share, templates, and rows per template type."""
    counts, entries = manifest["counts"], manifest["tasks"]

    def ttypes(role: str, name: str) -> dict:
        if stats is not None:
            return stats.template_types.get((role, name), {})
        return entries[name].get("rows_per_type") or {}

    types = sorted({tt for n, t in entries.items() for tt in ttypes(t["role"], n)})
    header = ["task", "cluster", "split", "examples", "rows", "share of split", "templates"]
    header += ["inverted"] if tasks else []
    header += ["rows per template"] + [code(t) for t in types]
    rows = []
    for role in ("train", "eval"):
        total = counts[role] or 1
        for n, t in sorted(((n, t) for n, t in entries.items() if t["role"] == role),
                           key=lambda x: (x[1]["cluster"], x[0])):
            row = [code(n), code(t["cluster"]), role, _n(t["examples"]), _n(t["rows"]), _pct(t["rows"] / total),
                   t["templates"]]
            if tasks:
                task = tasks.get(n)
                row.append(sum(tp.inverted for tp in task.templates) if task is not None else "")
            row.append(_spread(list(t.get("rows_per_template", {}).values())))
            d = ttypes(role, n)
            rows.append(row + [_n(d.get(tt, 0)) for tt in types])
    return _table(header, rows, "lllrrrr" + "r" * (len(header) - 7))


def _spread(per_template: list[int]) -> str:
    """Rows per template: one number when all are equal, else the range."""
    if not per_template:
        return ""
    lo, hi = min(per_template), max(per_template)
    return f"{lo:,}" if lo == hi else f"{lo:,}–{hi:,}"


def _lengths(stats, images, clusters) -> list[str]:
    out = ["## Lengths", ""]
    if "lengths" in images:
        out += [f"![Histograms of input and target lengths]({images['lengths']})", ""]
    units = [("chars", "characters")] + ([("tokens", "tokens")] if stats.tokens else [])
    rows = []
    for unit, label in units:
        for split in ("train", "eval"):
            for col in ("inputs", "targets"):
                d = stats.dist(split, col, unit)
                if not d.n:
                    continue
                total = _n(d.total) if unit == "chars" else "≈ " + _n(round(d.mean * stats.rows.get(split, 0)))
                rows.append([split, code(col), label, _n(d.mean), _n(d.quantile(0.5)), _n(d.quantile(0.95)),
                             _n(d.max), total])
    out += [_table(["split", "column", "unit", "mean", "median", "p95", "max", "total"], rows, "lllrrrrr"), ""]
    if stats.tokens:
        out += _token_budget(stats)
        sample = ", ".join(f"{s}: {_n(n)} of {_n(stats.rows.get(s, 0))} rows" for s, n in stats.token_sample.items())
        out += [f"Characters are counted on every row. Tokens are counted with {code(_tok_name(stats.tokenizer))} "
                f"(no special tokens) on a deterministic sample ({sample}); token totals are estimates "
                "(mean × rows).", ""]
    else:
        out += ["Characters are counted on every row (Unicode code points). For token counts, build with "
                "`--tokenizer NAME_OR_PATH` or run `flanbuild card OUT --tokenizer NAME_OR_PATH`.", ""]
    rows = []
    for c in clusters:
        for split in ("train", "eval"):
            di, dt = stats.cluster_chars.get((split, c, "inputs")), stats.cluster_chars.get((split, c, "targets"))
            if di is None or not di.n:
                continue
            rows.append([code(c), split, _n(di.mean), _n(di.quantile(0.95)), _n(di.max),
                         _n(dt.mean), _n(dt.quantile(0.95)), _n(dt.max)])
    out += ["Per cluster, in characters:", "",
            _table(["cluster", "split", "inputs mean", "inputs p95", "inputs max", "targets mean", "targets p95",
                    "targets max"], rows, "llrrrrrr"), ""]
    return out


TOKEN_BUDGETS = (512, 1024, 2048)  # common context lengths: how much of the mixture would be cut


def _token_budget(stats) -> list[str]:
    """The share of rows whose input (and input + target) is longer than common context lengths."""
    rows = []
    for split in ("train", "eval"):
        d = stats.dist(split, "inputs", "tokens")
        if d.n:
            values, counts = d.arrays()
            rows.append([split, code("inputs")] + [_pct(counts[values > b].sum() / d.n) for b in TOKEN_BUDGETS])
    if not rows:
        return []
    return ["Rows longer than a context length, in tokens (on the sample):", "",
            _table(["split", "column"] + [f"> {b:,}" for b in TOKEN_BUDGETS], rows, "ll" + "r" * len(TOKEN_BUDGETS)),
            ""]


def _tok_name(name: str | None) -> str:
    from flanbuild.output.plots import tokenizer_label

    return tokenizer_label(name)


def _cut(text: str) -> str:
    if len(text) <= EXAMPLE_MAX_CHARS:
        return text
    return text[:EXAMPLE_MAX_CHARS].rstrip() + f"\n[... {len(text) - EXAMPLE_MAX_CHARS:,} more characters]"


def _examples(stats, entries) -> list[str]:
    if not stats.examples:
        return []
    out = ["## Examples", "",
           "Three rows per cluster, picked by a seeded rule from as many tasks as the cluster has, shown as "
           "stored (long texts are cut here, not in the data).", ""]
    for cluster, rows in stats.examples.items():
        role = entries.get(rows[0]["task_name"], {}).get("role", "train")
        out += [f"### {md(cluster)} ({'eval, held out' if role == 'eval' else 'train'})", ""]
        for row in rows:
            out += [f"**{md(row['task_name'])}**, template {row['template_id']} ({code(row['template_type'])}), "
                    f"{code(row['example_id'])}", "",
                    "Input:", "", _fenced(_cut(row["inputs"])), "",
                    "Target:", "", _fenced(_cut(row["targets"])), ""]
            others = [r for r in row.get("references") or [] if r != row["targets"]]
            if others:
                out += [f"Other accepted targets: {md('; '.join(_cut(r) for r in others[:5]))}"
                        + (f" (and {len(others) - 5} more)" if len(others) > 5 else ""), ""]
    return out


def _first_sentence(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    m = re.search(r"(?<=[.!?])\s", text)
    if m:
        text = text[:m.start()]
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "…"


def _sources(entries, tasks) -> list[str]:
    rows = []
    for n, t in sorted(entries.items()):
        task = tasks.get(n)
        dataset, licence, homepage = _task_source(n, t, task)
        name = f"[{code(n)}]({homepage})" if homepage else code(n)
        desc = md(_first_sentence(task.description)) if task is not None and task.description else ""
        rows.append([name, dataset, licence, _data_from(t.get("source", "")), desc])
    out = ["## Source datasets and licenses", "",
           "This mixture redistributes text from the datasets below, rewritten through templates; each keeps "
           "its own license and terms. Check them before you use or share the mixture"
           + ("; a task name links to its dataset's homepage." if tasks else
              " (build with the task registry to list the licenses)."),
           "",
           _table(["task", "dataset", "license", "rows from", "description"], rows), ""]
    return out + _sample_sources(entries)


def _data_from(origin: str) -> str:
    """Where a task's rows were read: the mirror, the Hub, the embedded sample, a local file or memory."""
    kind = origin.partition(":")[0]
    return {"mirror": "local mirror", "hub": "Hugging Face Hub", "sample": "embedded sample (demo)",
            "file": "local file", "memory": "in memory"}.get(kind, md(kind or "unknown"))


def _sample_sources(entries) -> list[str]:
    """Licence and provenance of the datasets whose rows came from flanbuild's embedded sample."""
    from flanbuild.sources import sample

    records = {}
    for t in entries.values():
        info = sample.dataset_info(t.get("source", ""))
        if info is not None:
            records[(info["hub_id"], info["config"])] = info
    if not records:
        return []
    rows = [[f"{code(r['hub_id'])} / {code(r['config'])}", code(r["license"]), md(r["license_stated"]),
             f"[{md(r['source_repo'].split('github.com/')[-1])}]({r['source_repo']}) @ {code(r['source_commit'][:12])}"]
            for _, r in sorted(records.items())]
    return ["### Embedded sample", "",
            "Tasks whose rows come from the embedded sample were built from flanbuild's demo sample: a few hundred "
            "real rows per split of datasets whose licences allow redistribution (not the full datasets; give "
            "`--data-dir` or go online for the full FLAN mixture). Their licences and sources:", "",
            _table(["dataset / config", "license (SPDX)", "license as stated", "source"], rows), ""]


def _skipped(manifest, tasks) -> list[str]:
    """Skipped tasks grouped by reason (the reason without the task's own hub id/config/split), largest first."""
    groups: dict[str, list[str]] = {}
    for n, reason in sorted(manifest["skipped"].items()):
        task = tasks.get(n)
        manual = task is not None and bool(task.source.manual)
        groups.setdefault(_reason_kind(reason), []).append(code(n) + (" (manual download)" if manual else ""))
    rows = [[md(kind), str(len(names)), ", ".join(names)]
            for kind, names in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))]
    return [
        "## Skipped tasks", "",
        f"{len(manifest['skipped'])} task(s) of the catalog are not in this mixture because their data was not "
        "available where the build looked (a local mirror, the Hugging Face cache, the Hub or the embedded "
        "sample), grouped by reason. The full reason of each, with instructions for the datasets that need a "
        "manual download (see their task cards), is in `mixture.json` (`skipped`).", "",
        _table(["reason", "tasks", "which"], rows), ""]


def _reason_kind(reason: str) -> str:
    """A skip reason without what differs per task: a leading ``<hub id>/<config>/<split>`` is left out."""
    text = _short_reason(reason)
    return re.sub(r"^\S+/\S+ (?=not |is not )", "", text)


def _short_reason(reason: str, limit: int = 220) -> str:
    text = " ".join(reason.split()).split("; ")[0]
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "…"


def _columns_and_loading(manifest) -> list[str]:
    return [
        "## Columns", "",
        "Both splits have the same columns (the Flan Collection's names first):", "",
        columns_markdown(), "",
        "## How to load it", "",
        "With 🤗 `datasets` (this folder, or its Hub repository id):", "",
        _fenced("from datasets import load_dataset\n\n"
                "ds = load_dataset(\"path/to/this/folder\")   # DatasetDict with 'train' and 'eval'\n"
                "print(ds[\"train\"][0][\"inputs\"], \"->\", ds[\"train\"][0][\"targets\"])\n"
                "heldout = ds[\"eval\"].filter(lambda r: r[\"task_name\"] == \"%s\")"
                % next(iter(sorted(n for n, t in manifest["tasks"].items() if t["role"] == "eval")), "TASK"),
                "python"), "",
        "With pandas (or any Parquet reader: polars, DuckDB, Spark):", "",
        _fenced("import glob\nimport pandas as pd\n\n"
                "shards = sorted(glob.glob(\"path/to/this/folder/data/train-*.parquet\"))\n"
                "train = pd.concat(pd.read_parquet(p) for p in shards)\n"
                "train.groupby(\"cluster\").size()", "python"), "",
        "For a trainer, export the columns it reads (`flanbuild export`, or `flanbuild build --format ...`):", "",
        _table(["format", "columns", "read by"], [
            [code("chat"), code("messages") + " (user = inputs, assistant = targets)",
             "TRL `SFTTrainer`, axolotl `type: chat_template`, LLaMA-Factory (`sharegpt` entry)"],
            [code("prompt-completion"), code("prompt") + ", " + code("completion"),
             "TRL `SFTTrainer` (loss on the completion only)"],
            [code("alpaca"), ", ".join(code(c) for c in ("instruction", "input", "output")),
             "axolotl `type: alpaca`, LLaMA-Factory (`dataset_info.json` included)"],
            [code("flan"), "the columns above", "anything that reads `inputs`/`targets`"],
        ]), "",
        _fenced("flanbuild export path/to/this/folder --format chat --out mixture-chat   # add --jsonl for JSON lines\n"
                "flanbuild export path/to/this/folder --format prompt-completion --out mixture-pc", "bash"), "",
        "TRL:", "",
        _fenced("from datasets import load_dataset\nfrom trl import SFTConfig, SFTTrainer\n\n"
                "ds = load_dataset(\"mixture-chat\")            # or mixture-pc\n"
                "trainer = SFTTrainer(model=\"your/model\", train_dataset=ds[\"train\"], eval_dataset=ds[\"eval\"],\n"
                "                     args=SFTConfig(output_dir=\"run\"))\n"
                "trainer.train()", "python"), "",
        "axolotl (`config.yml`):", "",
        _fenced("datasets:\n  - path: mixture-chat\n    type: chat_template\n    field_messages: messages\n"
                "    split: train", "yaml"), "",
        "LLaMA-Factory: every export has a `dataset_info.json`; set `dataset_dir` to the export folder and "
        "`dataset` to one of its entries (e.g. `flan2021_train`).", "",
        "## Citation", "",
        "If you use this mixture, cite the FLAN paper and the source datasets listed above:", "",
        _fenced("@inproceedings{wei2022finetuned,\n"
                "  title     = {Finetuned Language Models are Zero-Shot Learners},\n"
                "  author    = {Wei, Jason and Bosma, Maarten and Zhao, Vincent and Guu, Kelvin and Yu, Adams Wei "
                "and Lester, Brian and Du, Nan and Dai, Andrew M. and Le, Quoc V.},\n"
                "  booktitle = {International Conference on Learning Representations},\n"
                "  year      = {2022},\n  url       = {https://openreview.net/forum?id=gEZrGCozdqR}\n}", "bibtex"),
        "",
    ]


def columns_markdown() -> str:
    """The columns table of the card and of README.md, from the output schema and its COLUMN_DOCS."""
    from flanbuild.pipeline.render import COLUMN_DOCS, OUTPUT_SCHEMA

    return _table(["column", "type", "meaning"],
                  [[code(f.name), code(_type_name(f.type)), _doc_cell(COLUMN_DOCS[f.name])] for f in OUTPUT_SCHEMA])


def _doc_cell(text: str) -> str:
    """A column description in a table cell: its `code` spans kept, pipes inside them escaped."""
    return re.sub(r"`([^`]*)`", lambda m: code(m.group(1)), text)


def _type_name(typ) -> str:
    import pyarrow as pa

    if pa.types.is_list(typ):
        return f"list<{typ.value_type}>"
    return str(typ)


def pictures_possible() -> bool:
    """Whether matplotlib is installed (found without importing it)."""
    from importlib.util import find_spec

    return find_spec("matplotlib") is not None


def write_card(out_dir: Path, manifest: dict, tasks: dict | None = None, tokenizer: str | None = None, *,
               plots: bool = True, stats: MixtureStats | None = None, cache_dir: Path | None = None,
               composition: Future | None = None) -> dict:
    """Write ``out_dir/README.md`` and its pictures for a build in ``out_dir``.

    Streams the split Parquet files listed in ``manifest["files"]`` once; ``tasks`` (name -> Task) adds
    licenses and descriptions; ``tokenizer`` (a hub id or a path) adds token counts; ``plots=False``
    skips the pictures (and matplotlib). The PNGs are not part of ``mixture.json``'s ``files``.
    ``stats`` given (the build collects them while writing) means no pass over the data here.
    ``cache_dir``: pictures of the same numbers are copied from there instead of drawn (output/plots.py).
    ``composition``: the composition picture is being drawn already (``plots.start_composition``).
    Returns the scan's summary numbers (rows, seconds) for logging.
    """
    import time

    from flanbuild.output.stats import scan

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    if stats is None:
        stats = scan(out_dir, manifest, tokenizer=tokenizer)
    images = {}
    if plots and pictures_possible():  # matplotlib is optional: without it the card has no pictures
        from flanbuild.output.plots import write_plots

        images = write_plots(out_dir, manifest, stats, cache_dir, composition)
    text = render_card(manifest, tasks=tasks, stats=stats, images=images)
    tmp = out_dir / "README.md.tmp"
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out_dir / "README.md")
    return {"rows": sum(stats.rows.values()), "seconds": time.perf_counter() - t0, "images": sorted(images.values())}
