"""The data commands: ``tasks``, ``render``, ``lint``, ``build``, ``verify``.

``add_parsers(subparsers, common, data)`` registers them; each handler takes the parsed arguments and
returns the exit code. User mistakes raise ``FlanbuildError``; ``flanbuild.cli.main`` prints them.
Heavy modules are imported inside the handlers, so ``flanbuild --help`` stays instant.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

from flanbuild.cli import argtypes
from flanbuild.cli.argtypes import csv as _csv
from flanbuild.errors import FlanbuildError


def _data_dirs(args) -> list:
    """``--data-dir`` (or FLANBUILD_DATA_DIR) entries: local directories, or mirrors at URLs."""
    from flanbuild.builder import BuildConfig
    from flanbuild.sources import urls

    given = list(args.data_dir) if args.data_dir else list(BuildConfig.data_dirs_from_env())
    dirs = [urls.data_dir(d, Path(args.cache_dir) if getattr(args, "cache_dir", None) else None) for d in given]
    for d in dirs:  # a misspelt mirror path is an error, not a silent "not in the local mirror" for every task
        urls.check_data_dir(d, "" if args.data_dir else " (from FLANBUILD_DATA_DIR)")
    return dirs


def _env_size(name: str) -> int | None:
    """A size from the environment (``50G``); a bad one is an error naming the variable."""
    import argparse

    value = os.environ.get(name, "").strip()
    try:
        return argtypes.size(value) if value else None
    except argparse.ArgumentTypeError as e:
        raise FlanbuildError(f"{name}: {e}") from None


def _registry(args):
    from flanbuild.builder import load_registry

    return load_registry(tuple(Path(c) for c in args.catalog))


def cmd_tasks(args) -> int:
    registry = _registry(args)
    if args.cluster:
        registry.check_clusters([args.cluster])
    tasks = [t for _, t in sorted(registry.tasks.items()) if not args.cluster or t.cluster == args.cluster]
    rows = [{
        "name": t.name, "cluster": t.cluster, "subcluster": t.subcluster, "type": t.type,
        "templates": len(t.templates), "inverted": sum(tp.inverted for tp in t.templates),
        "hub": t.source.hub, "config": t.source.config, "splits": t.source.splits, "metric": t.metric,
        "manual": t.source.manual,
    } for t in tasks]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if args.markdown:
        print(catalog_markdown(tasks, _data_dirs(args)))
        return 0
    width = max([len(r["name"]) for r in rows] + [4])
    print(f"{'task':{width}}  {'cluster':34}  {'type':14}  tpl  inv  source")
    for r in rows:
        src = f"{r['hub']}/{r['config']}" if r["hub"] else "local files"
        print(f"{r['name']:{width}}  {r['cluster']:34}  {r['type']:14}  {r['templates']:3}  {r['inverted']:3}  {src}")
    print(f"{len(rows)} tasks in {len({r['cluster'] for r in rows})} clusters", file=sys.stderr)
    return 0


def catalog_markdown(tasks, data_dirs: list[Path] | None = None) -> str:
    """The catalog table of README.md: task, cluster, hub id, splits, templates.

    The README copy is made without data dirs so that it does not change when a mirror gains data;
    with data dirs, a last column says which splits they hold.
    """
    from flanbuild.sources.loader import find_in_mirror

    head = "| task | cluster | hub id / config | splits | templates (inverted) |"
    lines = [head + (" offline mirror |" if data_dirs else ""), "|---" * (5 + bool(data_dirs)) + "|"]
    for t in tasks:
        src = t.source
        splits = ", ".join(f"{role}: `{split}`" for role, split in src.splits.items())
        if src.manual:
            splits += " (manual download)"
        cluster = t.cluster + (f" / {t.subcluster}" if t.subcluster else "")
        line = (f"| {t.name} | {cluster} | `{src.hub}` / `{src.config}` | {splits} | {len(t.templates)} "
                f"({sum(tp.inverted for tp in t.templates)}) |")
        if data_dirs:
            have = [role for role, split in src.splits.items()
                    if src.hub and any(find_in_mirror(d, src.hub, src.config, split) for d in data_dirs)]
            line += f" {', '.join(have) or 'no'} |"
        lines.append(line)
    return "\n".join(lines)


def cmd_render(args) -> int:
    import numpy as np

    from flanbuild.pipeline.examples import ExampleMapper, valid_indices
    from flanbuild.pipeline.render import render_template, template_type
    from flanbuild.sources.loader import DataNotFound, load_split

    if args.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    task = _registry(args).task(args.task)
    templates = [task.template(args.template)] if args.template is not None else sorted(task.templates, key=lambda t: t.id)
    try:
        split = load_split(task, args.split, _data_dirs(args))
    except DataNotFound as e:
        raise FlanbuildError(f"task {task.name}: no {args.split} data: {e}") from None
    mapper = ExampleMapper(task, split.features)
    indices = valid_indices(task, split)[: args.n]
    for chunk, rows in split.rows(np.asarray(indices)):
        for idx, row in zip(chunk, rows):
            example = mapper(row, f"row {idx} of {split.origin}")
            if example is None:
                continue
            print(f"=== {task.name}/{task.source.split_name(args.split)}/{idx}  ({split.origin})")
            for t in templates:
                show = t.shows_options and not args.no_options
                inp, tgt = render_template(task, t, example, show)
                kind = template_type(task, t, show) + (", inverted" if t.inverted else "")
                print(f"--- template {t.id} ({kind})")
                print(inp)
                print(f">>> {tgt}")
            print()
    return 0


def cmd_lint(args) -> int:
    from flanbuild.lint import lint

    registry = _registry(args)
    problems, n_tasks, renders = lint(registry, list(args.tasks) or None, _data_dirs(args))
    for p in problems:
        print(p)
    print(f"lint: {n_tasks} tasks, {sum(len(registry.task(n).templates) for n in (args.tasks or registry.tasks))} "
          f"templates, {renders} renders checked, {len(problems)} problem(s)", file=sys.stderr)
    return 1 if problems else 0


def _check_build_options(args, out_is_url: bool) -> None:
    """Options that contradict each other: an error before anything is read."""
    if out_is_url and (args.format != "flan" or args.jsonl):
        raise FlanbuildError("--format/--jsonl exports need a local --out (export after copying the output down)")
    if args.no_cache and args.cache_max_size is not None:
        raise FlanbuildError("--cache-max-size limits the cache, which --no-cache does not use: give one of them")
    if args.train_size is not None and args.max_epochs == 0:
        raise FlanbuildError("--max-epochs 0 (no limit) with --train-size could repeat a small task without bound; "
                             "give a finite --max-epochs > 0")


def cmd_build(args) -> int:
    from dataclasses import replace

    from flanbuild.builder import BuildConfig, build
    from flanbuild.pipeline.mixer import MixConfig
    from flanbuild.catalog.recipes import load_recipe
    from flanbuild.sources import urls

    if args.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    _check_build_options(args, urls.is_url(args.out))
    recipe = load_recipe(args.mixture)
    if args.tokenizer:
        recipe = replace(recipe, prompt=replace(recipe.prompt, tokenizer=args.tokenizer))
    if args.decontaminate_ngram is not None:
        recipe = replace(recipe, decontaminate_ngram=args.decontaminate_ngram)
    mix = MixConfig(
        heldout=tuple(args.heldout or ()), extra_removals=not args.no_extra_removals,
        task_cap=args.task_cap, rate_cap=args.rate_cap, temperature=args.temperature,
        task_weights=dict(args.task_weight), cluster_weights=dict(args.cluster_weight),
        train_size=args.train_size, eval_cap=args.eval_cap, max_epochs=args.max_epochs,
    )
    config = BuildConfig(
        out=args.out if urls.is_url(args.out) else Path(args.out), seed=args.seed, recipe=recipe, mix=mix,
        data_dirs=tuple(d.url if isinstance(d, urls.RemoteMirror) else d for d in _data_dirs(args)),
        catalogs=tuple(Path(c) for c in args.catalog), tasks=args.tasks, strict=args.strict,
        allow_empty_split=args.allow_empty_split,
        niv2_dir=Path(args.niv2_dir) if args.niv2_dir else None,
        promptsource_dir=Path(args.promptsource_dir) if args.promptsource_dir else None,
        shard_rows=args.shard_rows, command="flanbuild " + shlex.join(args.argv),
        clusters=args.clusters, workers=args.workers, engine=args.engine, scheduler=args.scheduler,
        cache_dir=Path(args.cache_dir) if args.cache_dir else None, use_cache=not args.no_cache, plots=not args.no_plots,
        cache_max_size=args.cache_max_size if args.cache_max_size is not None else _env_size("FLANBUILD_CACHE_MAX_SIZE"),
    )
    from flanbuild.pipeline.progress import Progress

    progress = Progress.from_args(args)
    result = build(config, progress=progress)
    if args.format != "flan" or args.jsonl:
        from flanbuild.output.export import default_dest, export

        export(result.out, args.format, default_dest(result.out, args.format, args.jsonl), jsonl=args.jsonl, log=progress)
    print(result.out)
    return 0


def cmd_sources(args) -> int:
    """Where each task's data would come from; with --check, the Hub compared with the cards."""
    from flanbuild.sources import inspect, loader

    registry = _registry(args)
    tasks = [registry.task(n) for n in args.tasks] if args.tasks else [t for _, t in sorted(registry.tasks.items())]
    online = not getattr(args, "offline", False) and loader.hub_reachable()
    for task in tasks:
        print(inspect.locate(task, _data_dirs(args), online).line())
    if args.check and not online:
        print("--check: the Hub is not reachable here (offline or HF_HUB_OFFLINE=1); nothing was compared")
    elif args.check:
        api, fs = inspect.hub_clients()
        problems = [line for task in tasks for line in inspect.check(task, api, fs)]
        print(*problems, sep="\n") if problems else print(f"--check: {len(tasks)} task(s) agree with the Hub")
        return 1 if problems else 0
    return 0


def cmd_verify(args) -> int:
    from flanbuild.output.manifest import verify

    problems = verify(Path(args.out))
    for p in problems:
        print(f"{args.out}: {p}")
    print(f"verify: {len(problems)} problem(s)" if problems else f"verify: {args.out} matches its mixture.json",
          file=sys.stderr)
    return 1 if problems else 0


def add_parsers(sub, common, data) -> None:
    """Register the data commands; ``common`` and ``data`` are the shared option parents."""
    p = sub.add_parser("tasks", parents=[common, data], help="list the task registry")
    p.add_argument("--cluster", help="only tasks of this cluster")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--markdown", action="store_true", help="the README catalog table (offline column from --data-dir)")
    p.set_defaults(func=cmd_tasks)

    p = sub.add_parser("render", parents=[common, data], help="preview a task's templates on real rows")
    p.add_argument("task")
    p.add_argument("-n", type=argtypes.positive_count, default=1, help="number of rows (default 1)")
    p.add_argument("--template", type=argtypes.template_id, help="only this template id (default: all, side by side)")
    p.add_argument("--split", choices=["train", "eval"], default="train")
    p.add_argument("--no-options", action="store_true", help="render without the options block")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("lint", parents=[common, data], help="check every template of every task")
    p.add_argument("--tasks", type=_csv, default=(), help="comma-separated task names (default: all)")
    p.set_defaults(func=cmd_lint)

    p = sub.add_parser("build", parents=[common, data], help="build a mixture into --out")
    p.add_argument("--out", required=True, help="output directory (replaced atomically)")
    p.add_argument("--mixture", default="flan2021", metavar="NAME|FILE",
                   help="mixture recipe: a shipped name (flan2021, flan2022) or a YAML file (default flan2021)")
    p.add_argument("--heldout", action="append", metavar="CLUSTER",
                   help="held-out cluster (repeatable; default: the recipe's, nli)")
    p.add_argument("--seed", type=argtypes.seed, default=0)
    p.add_argument("--strict", action="store_true", help="missing data for a task is an error, not a skip")
    p.add_argument("--allow-empty-split", action="store_true",
                   help="write the mixture even if its eval (or train) split is empty; the card leaves that split out")
    p.add_argument("--tasks", type=_csv, default=(), help="build only these tasks (comma-separated)")
    p.add_argument("--clusters", type=_csv, default=(), help="build only tasks of these clusters (comma-separated)")
    p.add_argument("--workers", type=argtypes.workers, default=0, help="render processes (default 0 = the idle cores, one per 100k rows); "
                                                                   "the output is the same for any number")
    p.add_argument("--engine", choices=["local", "dask"], default="local",
                   help="local processes, or a Dask distributed cluster (pip install 'flanbuild[dask]')")
    p.add_argument("--scheduler", metavar="ADDRESS", help="Dask scheduler address (default: a local cluster)")
    p.add_argument("--cache-dir", metavar="DIR", help="render cache (default: $FLANBUILD_CACHE or ~/.cache/flanbuild)")
    p.add_argument("--no-cache", action="store_true", help="render everything; do not read or write the cache")
    p.add_argument("--cache-max-size", type=argtypes.size, metavar="SIZE",
                   help="after the build, remove the least recently used cache entries beyond SIZE, e.g. 50G "
                        "(default: $FLANBUILD_CACHE_MAX_SIZE, else no limit)")
    p.add_argument("--no-plots", action="store_true", help="no pictures in the card (nor matplotlib): quicker rebuilds "
                                                          "while editing templates; the data files are the same")
    p.add_argument("--format", choices=["flan", "chat", "prompt-completion", "alpaca"], default="flan",
                   help="also export the mixture for a trainer into OUT/exports/FORMAT (see flanbuild export)")
    p.add_argument("--jsonl", action="store_true", help="with --format: write JSONL instead of Parquet")
    p.add_argument("--task-cap", type=argtypes.count, help="max examples per task, for every submixture (0 = none; "
                                                        "default: the recipe's, 30000 in flan2021)")
    p.add_argument("--rate-cap", type=argtypes.count, help="mixing-rate cap, for every submixture (0 = none; "
                                                        "default: the recipe's, 3000 in flan2021)")
    p.add_argument("--temperature", type=argtypes.temperature, default=1.0, help="mixing temperature (default 1)")
    p.add_argument("--task-weight", type=argtypes.weight, action="append", default=[], metavar="TASK=W")
    p.add_argument("--cluster-weight", type=argtypes.weight, action="append", default=[], metavar="CLUSTER=W")
    p.add_argument("--train-size", type=argtypes.positive_count, help="rows in train (default: sum of the capped rates)")
    p.add_argument("--max-epochs", type=argtypes.max_epochs, default=10.0,
                   help="a task repeats its rows at most this often (0 = no limit; default 10)")
    p.add_argument("--eval-cap", type=argtypes.count, default=0, help="max examples per held-out task (0 = all)")
    p.add_argument("--no-extra-removals", action="store_true", help="do not apply FLAN's also-removed clusters")
    p.add_argument("--shard-rows", type=argtypes.positive_count, default=250_000, help="rows per Parquet shard")
    p.add_argument("--niv2-dir", metavar="DIR", help="Super-NaturalInstructions root (tasks/*.json, splits/default/)")
    p.add_argument("--promptsource-dir", metavar="DIR", help="promptsource templates (<dataset>/<subset>/templates.yaml)")
    p.add_argument("--tokenizer", metavar="NAME_OR_PATH", help="count few-shot length budgets in this tokenizer's tokens")
    p.add_argument("--decontaminate-ngram", type=argtypes.ngram, metavar="N",
                   help="also drop train rows sharing an N-word n-gram with eval source text (0 = off; "
                        "default: the recipe's, 13 in flan2022)")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("sources", parents=[common, data], help="where each task's data comes from; --check asks the Hub")
    p.add_argument("--tasks", type=_csv, default=(), help="comma-separated task names (default: all)")
    p.add_argument("--check", action="store_true", help="compare configs, splits and features with the Hub")
    p.set_defaults(func=cmd_sources)

    p = sub.add_parser("verify", parents=[common], help="recompute the data files' hashes against mixture.json")
    p.add_argument("out")
    p.set_defaults(func=cmd_verify)
