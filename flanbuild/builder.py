"""The build: registry -> sources -> mixer plan -> render parts -> decontaminate -> writer.

``build(BuildConfig(...))`` is the whole pipeline behind ``flanbuild build`` and ``make mixture``.
The data flows one way; every decision before rendering is made from row counts and seeded keys.
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np

from flanbuild import cachedir
from flanbuild.pipeline import decontam
from flanbuild.pipeline import decontam_cache
from flanbuild.pipeline import engine
from flanbuild.pipeline import mixer
from flanbuild.pipeline import parts
from flanbuild.pipeline import writer
from flanbuild.pipeline import checks
from flanbuild.output.card import pictures_possible, write_card
from flanbuild.output import plots as card_plots
from flanbuild.output.stats import StatsCollector
from flanbuild.output.manifest import SCHEMA_VERSION, Manifest, TaskRecord, fingerprint, write_manifest
from flanbuild.output import reuse
from flanbuild.output import uptodate
from flanbuild.errors import FlanbuildError
from flanbuild.pipeline.columnar import compile_filter
from flanbuild.pipeline.examples import ExampleMapper, cached_indices, store_indices, valid_indices
from flanbuild.catalog.recipes import Recipe, Submixture
from flanbuild.pipeline.progress import Progress
from flanbuild.catalog.registry import Registry, default_registry
from flanbuild.pipeline.render import RenderJob, RenderStats, probe_prompted
from flanbuild.sources.loader import DataNotFound, SplitData, load_split, source_overlaps
from flanbuild.sources import sample
from flanbuild.sources import urls
from flanbuild.catalog.tasks import Task

EXEMPLAR_POOL = 10_000  # few-shot exemplars come from at most this many rows of a task (bounded memory)


@dataclass(frozen=True)
class BuildConfig:
    """Everything that decides a mixture's bytes (plus where to write it)."""

    out: Path | str  # a directory, or an fsspec URL the output is copied to (output/upload.py)
    seed: int = 0
    recipe: Recipe = field(default_factory=Recipe)  # submixtures, prompt style (default: FLAN 2021)
    mix: mixer.MixConfig = field(default_factory=mixer.MixConfig)  # held-out clusters, overrides of the caps
    data_dirs: tuple[Path | str, ...] = ()  # local directories or mirror URLs (sources/urls.py)
    catalogs: tuple[Path, ...] = ()
    tasks: tuple[str, ...] = ()  # build only these tasks (default: all)
    clusters: tuple[str, ...] = ()  # build only tasks of these clusters (default: all)
    strict: bool = False  # a task whose data is missing is an error, not a skip
    allow_empty_split: bool = False  # write a mixture whose eval (or train) split is empty, leaving it out of the card
    niv2_dir: Path | None = None  # Super-NaturalInstructions root (tasks/*.json, splits/default/*.txt)
    promptsource_dir: Path | None = None  # promptsource templates (<dataset>/<subset>/templates.yaml)
    workers: int = 0  # render processes (0 = engine.default_workers: idle cores the work can use); same output for any number
    engine: str = "local"  # local | dask
    scheduler: str | None = None  # Dask scheduler address (default: a local cluster)
    cache_dir: Path | None = None  # rendered-shard cache (default: $FLANBUILD_CACHE or ~/.cache/flanbuild)
    use_cache: bool = True
    cache_max_size: int | None = None  # bytes: after the build, least recently used cache entries go beyond it
    shard_rows: int = 250_000
    plots: bool = True  # the card's PNG pictures (matplotlib); off for speed, the Parquet bytes are the same
    command: str = ""  # the command line, recorded in the card

    @staticmethod
    def data_dirs_from_env() -> tuple[Path | str, ...]:
        return tuple(p if urls.is_url(p) else Path(p) for p in urls.split_dirs(os.environ.get("FLANBUILD_DATA_DIR", "")))

    def mirrors(self) -> list:
        """``data_dirs`` as the loader reads them (a URL becomes a RemoteMirror with local copies)."""
        return [urls.data_dir(d, self.cache_dir) for d in self.data_dirs]


@dataclass(frozen=True)
class BuildResult:
    out: Path | str  # a local directory, or the URL the output was copied to
    manifest: Manifest
    shards: int = 0  # render shards of this build (not in the manifest: they do not change its bytes)
    cached_shards: int = 0  # how many came from the cache


def load_registry(catalogs: tuple[Path, ...] = ()) -> Registry:
    """The default registry (built-in catalog + Python registrations) plus extra catalogs, in order.

    Returns a copy, so loading catalogs for one build never changes the process-wide registry.
    """
    registry = default_registry().copy()
    for directory in catalogs:
        registry.load_catalog(directory)
    return registry


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("flanbuild", "jinja2", "pyarrow", "numpy", "pyyaml", "datasets"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _add_providers(registry: Registry, config: BuildConfig) -> dict[str, str]:
    """Add NIv2 and promptsource tasks when their directories are given; returns unmatched files."""
    from flanbuild.sources import niv2
    from flanbuild.sources import promptsource

    unmatched: dict[str, str] = {}
    if config.niv2_dir is not None:
        for task in niv2.load_niv2(config.niv2_dir):
            registry.register_task(task)
    if config.promptsource_dir is not None:
        tasks, unmatched = promptsource.load_promptsource(config.promptsource_dir, registry.tasks)
        for task in tasks:
            registry.register_task(task)
    return unmatched


@dataclass
class Selection:
    """Stage 1's answer: which tasks take part, in which role, on which data."""

    group: dict[str, Submixture] = field(default_factory=dict)  # task -> its submixture
    roles: dict[str, str] = field(default_factory=dict)  # task -> train | eval
    data: dict[str, SplitData] = field(default_factory=dict)
    valid: dict[str, np.ndarray] = field(default_factory=dict)  # usable row indices of each task's split
    skipped: dict[str, str] = field(default_factory=dict)  # task -> why it has no data
    removed_tasks: list[str] = field(default_factory=list)
    unselected: list[str] = field(default_factory=list)
    unmatched: dict[str, str] = field(default_factory=dict)  # promptsource files that matched no task


def build(config: BuildConfig, registry: Registry | None = None, progress: Progress | None = None) -> BuildResult:
    """Build a mixture into ``config.out``. Raises FlanbuildError on bad input; writes nothing then.

    The stages run in order and hand their results forward explicitly: check the inputs, select the
    tasks and their data, plan the mix, render, decontaminate, write the splits, describe the build.
    """
    if urls.is_url(config.out):
        return _build_to_url(config, registry, progress)
    log = progress or Progress("quiet")
    started = time.perf_counter()
    out = Path(config.out).expanduser().absolute()
    if out.is_symlink():  # built at the link's target: the link stays a link, to the new output
        out = out.resolve()
    if config.engine == "local" and (config.workers or engine.default_workers(sys.maxsize)) > 1 \
            and not (out / "mixture.json").is_file():
        # A first build of OUT starts its workers' fork server now: the server's imports overlap the catalog
        # and the sources. A rebuild often needs no worker at all, and starts it only if one does.
        engine.start_fork_server([__name__])  # every function a worker runs is this module's or below it
    registry, unmatched = _check_inputs(config, out, registry)
    checks.check_names(registry, config)
    cache_dir = (config.cache_dir or urls.default_cache_dir()) if config.use_cache else None
    held, removed = mixer.excluded_clusters(registry.clusters, config.mix.heldout or config.recipe.heldout,
                                            config.mix.extra_removals)
    selection = _select(config, registry, held, removed, cache_dir, log)
    selection.unmatched = unmatched
    jobs, shares = _plan(config, registry, selection)
    for note in checks.plan_notes(config, {n: t.cluster for n, t in registry.tasks.items()}, selection.roles, shares):
        log(note)
    shard_keys = _shard_keys(jobs, selection.data) if cache_dir else {}
    key = _build_key(config, registry, selection, shard_keys, shares, held, removed) if cache_dir else ""
    ready = uptodate.current(out, key) if key else None
    if ready is not None:  # OUT already holds this build, verified: nothing to render, write or plot
        log.finish(f"{out} is up to date (build key {key[:12]}); nothing rendered or written, "
                   f"{time.perf_counter() - started:.1f}s")
        return BuildResult(out, ready, 0, 0)
    plan = Plan(selection, jobs, shares, held, removed, shard_keys, key)
    result = _make(config, registry, out, plan, cache_dir, log, started)
    if cache_dir is not None and config.cache_max_size is not None:
        _limit_cache(cache_dir, config.cache_max_size, log)
    return result


def _limit_cache(cache_dir: Path, max_size: int, log: Progress) -> None:
    """Prune the cache to ``max_size`` bytes, least recently used first: this build's entries were just
    used, so they go last (cachedir.py)."""
    inventory = cachedir.scan(cache_dir)
    chosen = cachedir.to_prune(inventory, max_size=max_size)
    if chosen:
        freed = cachedir.remove(inventory, chosen)
        log(f"cache over its limit of {max_size:,} bytes: removed {len(chosen)} least recently used entries "
            f"({freed:,} bytes)")


def _build_to_url(config: BuildConfig, registry: Registry | None, progress: Progress | None) -> BuildResult:
    """``out`` is an fsspec URL: build in a local temporary directory, then copy the files up
    (output/upload.py). The up-to-date check needs a local OUT, so a URL output is always rebuilt (the
    render cache still makes an unchanged rebuild cheap)."""
    import tempfile

    from flanbuild.output import upload

    url = str(config.out)
    upload.check_target(url)
    with tempfile.TemporaryDirectory(prefix="flanbuild-out-") as tmp:
        result = build(replace(config, out=Path(tmp) / "out"), registry, progress)
        upload.upload(result.out, url)
        (progress or Progress("quiet"))(f"copied the output to {url}")
    return replace(result, out=url)


@dataclass
class Plan:
    """Stages 1-2's answer, everything the making of the output needs."""

    selection: Selection
    jobs: list[RenderJob]
    shares: dict[str, mixer.TaskShare]
    held: set[str]
    removed: set[str]
    shard_keys: dict[str, list[str]]  # each task's render-cache keys (empty without a cache)
    key: str  # the build key ("" without a cache)


def _make(config: BuildConfig, registry: Registry, out: Path, plan: Plan, cache_dir: Path | None, log: Progress,
          started: float) -> BuildResult:
    """Stages 3-7 in a staging directory beside OUT: render, decontaminate, write, describe, publish."""
    selection, jobs = plan.selection, plan.jobs
    stage = writer.staging_dir(out)
    composition = []  # the future of the composition picture's thread, once started (_start_composition)
    try:
        parts_dir = stage / ".parts"
        parts_dir.mkdir()
        paths, stats, n_shards, cached = _render(jobs, selection.data, selection.roles, parts_dir, cache_dir,
                                                 plan.shard_keys, config, log)
        jobs = _drop_empty(jobs, stats, selection, log)
        decontaminated, dropped = _decontaminate(jobs, selection.data, paths, stats, config.recipe.decontaminate_ngram,
                                                 log, plan.shard_keys, cache_dir,
                                                 _local_workers(config, sum(s.rows for s in stats.values())))
        part_keys = {p: k for name, ps in paths.items() for p, k in zip(ps, plan.shard_keys.get(name, ()))}
        files, collector = _write_splits(stage, out, jobs, paths, dropped, stats, config, part_keys, cache_dir, log,
                                         meanwhile=lambda: _start_composition(stage, jobs, stats, config, cache_dir,
                                                                              composition))
        shutil.rmtree(parts_dir)
        manifest = _describe(config, selection, jobs, stats, plan.shares, decontaminated, files, plan.held,
                             plan.removed)
        _complete(manifest, config, registry, plan.key)
        write_manifest(stage, manifest)
        log.stage("writing the dataset card", detail="plots off" if not config.plots else "")
        write_card(stage, manifest, registry.tasks, plots=config.plots, stats=collector.finish(manifest),
                   cache_dir=cache_dir, composition=composition[0] if composition else None)
        writer.publish(stage, out)
    except BaseException:
        for drawing in composition:
            drawing.exception()  # the drawing thread is done with the staging directory
        shutil.rmtree(stage, ignore_errors=True)
        raise
    log.finish(f"wrote {out}: train {manifest['counts']['train']} rows, eval {manifest['counts']['eval']} rows, "
               f"{len(selection.skipped)} task(s) skipped, {manifest['decontaminated']['total']} train rows "
               f"decontaminated, {time.perf_counter() - started:.1f}s")
    return BuildResult(out, manifest, n_shards, cached)


def _complete(manifest: Manifest, config: BuildConfig, registry: Registry, key: str) -> None:
    """The manifest's last entries (build key, catalog overrides), and the refusal of an empty split."""
    if key:
        manifest["build_key"] = key
    if registry.overrides:  # catalog entries that replaced earlier ones (override: true): on record
        manifest["config"]["overrides"] = [dict(o) for o in registry.overrides]
    empty = [split for split, rows in manifest["counts"].items() if rows == 0]
    if empty and not config.allow_empty_split:  # e.g. decontamination removed every train row
        raise FlanbuildError(f"the {' and '.join(empty)} split of this build would be empty "
                             "(--allow-empty-split writes the mixture without it)")


def _shard_keys(jobs: list[RenderJob], data: dict[str, SplitData]) -> dict[str, list[str]]:
    """Each task's render-cache keys, shard by shard (what names its rendered bytes)."""
    return {job.task.name: [engine.cache_key(piece, data[job.task.name]) for piece in engine.split_job(job)]
            for job in jobs}


def _build_key(config: BuildConfig, registry: Registry, sel: Selection, shard_keys: dict[str, list[str]],
               shares: dict[str, mixer.TaskShare], held: set[str], removed: set[str]) -> str:
    """The key of this build (output/uptodate.py): every shard's cache key plus what the manifest and
    the card record besides the data."""
    record = {
        "config": _config_record(config, held, removed), "command": config.command, "plots": config.plots,
        "allow_empty_split": config.allow_empty_split, "overrides": registry.overrides,
        "skipped": sel.skipped, "unmatched": sel.unmatched, "removed": sel.removed_tasks,
        "unselected": sel.unselected, "sources": {n: d.origin for n, d in sel.data.items()},
        "shares": {n: asdict(s) for n, s in shares.items()}, "versions": _versions(),
        "clusters": registry.clusters,
    }
    return uptodate.build_key([k for name in sorted(shard_keys) for k in shard_keys[name]], record, registry.tasks)


def _check_inputs(config: BuildConfig, out: Path, registry: Registry | None) -> tuple[Registry, dict[str, str]]:
    """Stage 0: refuse bad input before any work.

    Returns the build's own copy of the registry, with the NIv2/promptsource tasks added, and the
    promptsource files that matched no task.
    """
    writer.check_output_path(out)
    from flanbuild.output.replace import check_replaceable

    check_replaceable(out)  # only a verified flanbuild output holding nothing else is replaced
    for d in (*config.mirrors(), *(Path(p) for p in (config.niv2_dir, config.promptsource_dir) if p is not None)):
        urls.check_data_dir(d)
    registry = (registry.copy() if registry else load_registry(config.catalogs))
    unmatched = _add_providers(registry, config)
    for name in config.tasks:
        registry.task(name)
    registry.check_clusters(config.clusters)
    for sub in config.recipe.submixtures:
        registry.check_clusters(sub.clusters, f"cluster in submixture {sub.name}")
    return registry, unmatched


def _select(config: BuildConfig, registry: Registry, held: set[str], removed: set[str], cache_dir: Path | None,
            log: Progress) -> Selection:
    """Stage 1: each task's submixture and role, and its data with the usable rows (or why it has none)."""
    sel = Selection()
    wanted = _wanted(config, registry, held, removed, sel)
    splits = {task.name: _find_split(config, task, role) for task, _, role in wanted}
    rows = _usable_rows([(t, d) for t, _, _ in wanted if isinstance(d := splits[t.name], SplitData)], config, cache_dir)
    for task, sub, role in wanted:
        registry.tasks[task.name] = _load_task(config, task, sub, role, sel, splits[task.name], rows.get(task.name), log)
    from_sample = [n for n, d in sel.data.items() if d.origin.startswith(sample.ORIGIN_PREFIX)]
    if from_sample:
        log(sample.notice(len(from_sample)))
    _check_asked_for(config, registry, sel)
    if not any(r == "eval" for r in sel.roles.values()):
        msg = f"no eval data: no task of the held-out cluster(s) {', '.join(sorted(held))} has data here"
        if config.strict or not config.allow_empty_split:
            raise FlanbuildError(msg + " (give --data-dir or --heldout another cluster; --allow-empty-split "
                                 "writes a train-only mixture)")
        log(f"warning: {msg}")
    for msg in source_overlaps({n: (registry.tasks[n], r) for n, r in sel.roles.items()}):
        if config.strict:
            raise FlanbuildError(msg)
        log(f"warning: {msg}")
    return sel


def _wanted(config: BuildConfig, registry: Registry, held: set[str], removed: set[str],
            sel: Selection) -> list[tuple[Task, Submixture, str]]:
    """The tasks to load, with their submixture and role; the others are recorded in ``sel``."""
    wanted = []
    for name in sorted(config.tasks or registry.tasks):
        task = registry.tasks[name]
        if config.clusters and task.cluster not in config.clusters:
            continue
        sub = next((s for s in config.recipe.submixtures if s.selects(name, task.cluster, task.provider)), None)
        if sub is None:
            sel.unselected.append(name)
        elif task.cluster in removed:
            sel.removed_tasks.append(name)
        else:
            wanted.append((task, sub, "eval" if task.cluster in held else "train"))
    return wanted


def _check_asked_for(config: BuildConfig, registry: Registry, sel: Selection) -> None:
    """--tasks named a task that no submixture takes: say so rather than build without it."""
    asked_out = [n for n in config.tasks if n in sel.unselected]
    if asked_out:
        name = asked_out[0]
        dup = registry.tasks[name].duplicates
        why = f" (a copy of {', '.join(dup)}, which the recipe uses instead)" if dup else ""
        raise FlanbuildError(f"task {name} is not selected by any submixture of mixture {config.recipe.name}{why}; "
                             "ask for another task or use a recipe that includes it")


def _local_workers(config: BuildConfig, rows: int) -> int:
    """Processes for the stages other than rendering (filtering, the eval index, writing): this machine's
    workers; with --engine dask these stages stay in the client, one process."""
    return 1 if config.engine == "dask" else config.workers or engine.default_workers(rows)


def _find_split(config: BuildConfig, task: Task, role: str) -> SplitData | DataNotFound:
    """The task's split, or why there is none (reported in name order by _load_task)."""
    try:
        if role == "eval" and task.provider == "promptsource":
            raise DataNotFound("promptsource tasks are training-only; its cluster is held out")
        return load_split(task, role, config.mirrors())
    except DataNotFound as e:
        return e


FILTER_PIECE_ROWS = 10_000  # rows per worker piece of a filter that runs row by row


def _usable_rows(found: list[tuple[Task, SplitData]], config: BuildConfig, cache_dir: Path | None) -> dict[str, np.ndarray]:
    """Each task's rows that its card's filter keeps. A filter that runs row by row is most of this stage,
    so with several workers and enough filtered rows the tasks are filtered in worker processes: a
    row-by-row filter in pieces of rows (multi_news' alone took 0.94 s at paper scale, longer than all
    the others together), first; a columnar one (milliseconds) whole."""
    out = {t.name: np.arange(d.num_rows, dtype=np.int64) for t, d in found if not t.filter}
    for t, d in found:  # cache hits first: a pool is started only for filters that must run
        if t.filter and (hit := cached_indices(t, d, cache_dir)) is not None:
            out[t.name] = hit
    filtered = [(t, d) for t, d in found if t.name not in out]
    total = sum(d.num_rows for _, d in filtered)
    workers = _local_workers(config, total)
    if not engine.use_pool(workers, len(filtered), total):
        out.update({t.name: valid_indices(t, d, cache_dir=cache_dir) for t, d in filtered})
        return out
    row_path = {t.name for t, _ in filtered if compile_filter(t.filter) is None}
    pieces = [(t, d, (a, min(a + FILTER_PIECE_ROWS, d.num_rows)))
              for t, d in filtered if t.name in row_path for a in range(0, d.num_rows, FILTER_PIECE_ROWS)]
    pieces += [(t, d, (0, d.num_rows)) for t, d in filtered if t.name not in row_path or not d.num_rows]
    kept: dict[str, list[np.ndarray]] = {}
    for (t, _, _), rows in zip(pieces, engine.process_map(_filter_rows, pieces, workers)):
        kept.setdefault(t.name, []).append(rows)
    for t, d in filtered:
        out[t.name] = np.concatenate(kept[t.name])
        store_indices(t, d, cache_dir, out[t.name])
    return out


def _filter_rows(item: tuple[Task, SplitData, tuple[int, int]]) -> np.ndarray:
    """In a worker process: the usable rows of a piece of a task."""
    task, data, rows = item
    return valid_indices(task, data, rows=rows)


def _load_task(config: BuildConfig, task: Task, sub: Submixture, role: str, sel: Selection,
               split: SplitData | DataNotFound, rows: np.ndarray | None, log: Progress) -> Task:
    """Record one task's split and usable rows in ``sel`` (or record why it is skipped).

    Returns the task as the build uses it (a promptsource task without its templates that fail here).
    """
    try:
        if isinstance(split, DataNotFound):
            raise split
        if len(rows) == 0:
            raise DataNotFound(f"the {role} split has no usable rows")
        if task.type == "prompted":
            task = _probe_templates(config, task, split, rows, sel, log)
    except DataNotFound as e:
        if config.strict:
            raise FlanbuildError(f"task {task.name}: {e}") from None
        sel.skipped[task.name] = str(e)
        log.skip(task.name, str(e))
        return task
    sel.group[task.name], sel.roles[task.name], sel.data[task.name], sel.valid[task.name] = sub, role, split, rows
    return task


def _probe_templates(config: BuildConfig, task: Task, split: SplitData, rows: np.ndarray, sel: Selection,
                     log: Progress) -> Task:
    """A third-party (promptsource) task without the templates that fail on its first rows, each recorded
    as skipped with its reason; DataNotFound when none is left."""
    failed = probe_prompted(task, split, rows, config.seed)
    for t in task.templates:
        if t.id in failed:
            key = f"{task.name} template {t.id} {getattr(t, 'name', '')!r}".rstrip()
            sel.skipped[key] = failed[t.id]
            log.skip(key, failed[t.id])
    if len(failed) == len(task.templates):
        raise DataNotFound(f"all {len(failed)} templates fail on its rows")
    return replace(task, templates=tuple(t for t in task.templates if t.id not in failed)) if failed else task


def _plan(config: BuildConfig, registry: Registry, sel: Selection) -> tuple[list[RenderJob], dict[str, mixer.TaskShare]]:
    """Stage 2: the mix (rates and counts of training tasks), then the rows each task renders."""
    style = config.recipe.prompt
    train = sorted(n for n in sel.roles if sel.roles[n] == "train")
    eval_only = not train and config.allow_empty_split and any(r == "eval" for r in sel.roles.values())
    shares = {} if eval_only else mixer.plan_train({n: len(sel.valid[n]) for n in train}, {n: registry.tasks[n].cluster for n in train},
                              config.mix, {n: sel.group[n].name for n in train},
                              {s.name: s for s in config.recipe.submixtures})
    jobs: list[RenderJob] = []
    for name in sorted(sel.roles):
        task, sub, valid = registry.tasks[name], sel.group[name].name, sel.valid[name]
        if sel.roles[name] == "eval":
            indices = mixer.select_eval(config.seed, name, valid, config.mix.eval_cap)
            jobs.append(RenderJob(task, "eval", indices, config.seed, sub, all_templates=True))
            continue
        share = shares[name]
        indices = mixer.select_rows(config.seed, name, "train", valid, share.used, share.count)
        pool = np.zeros(0, dtype=np.int64)
        if style.few_shot > 0:
            pool = mixer.ranked_pool(config.seed, name, "train", valid, min(share.used, EXEMPLAR_POOL))
            if task.type != "prompted" and len(pool) <= max(style.k):
                raise FlanbuildError(f"task {name}: few-shot k={max(style.k)} needs at least {max(style.k) + 1} "
                                     f"training rows (the query is never its own exemplar); it has {len(pool)}")
        jobs.append(RenderJob(task, "train", indices, config.seed, sub, style=style, exemplars=pool))
    return jobs, shares


def _write_splits(stage: Path, out: Path, jobs: list[RenderJob], paths: dict[str, list[Path]],
                  dropped: dict[str, tuple[np.ndarray, ...]], stats: dict[str, RenderStats], config: BuildConfig,
                  part_keys: dict[Path, str], cache_dir: Path | None, log: Progress,
                  meanwhile: Callable[[], object] = lambda: None) -> tuple[list[writer.DataFile], StatsCollector]:
    """Stage 5: the rendered parts, less the dropped rows, assembled into the train (interleaved) and eval
    split files, one process per file when there are several files and workers. A file whose plan the
    cache knows is taken from the previous output instead (output/reuse.py). The card's statistics are
    collected per file on the way and merged in file order. ``meanwhile`` is called when worker processes
    start writing: this process is free then."""
    by_role = {role: [writer.Part(j.task.name, tuple(paths[j.task.name]), stats[j.task.name].rows,
                                  dropped.get(j.task.name, ())) for j in jobs if j.role == role] for role in writer.SPLITS}
    writes = [w for role in writer.SPLITS
              for w in writer.plan_split(role, by_role[role], interleave=role == "train", seed=config.seed,
                                         shard_rows=config.shard_rows)]
    log.stage("writing the splits", total=sum(w.stop - w.start for w in writes))
    (stage / "data").mkdir(parents=True, exist_ok=True)
    seed, tokenizer = config.seed, config.recipe.prompt.tokenizer
    files = reuse.FileCache(cache_dir) if cache_dir is not None else None
    keys = [reuse.file_key(w, part_keys, seed, tokenizer) if files else None for w in writes]
    results = [files.reuse(k, out, stage, w.rel, seed, tokenizer) if k else None for k, w in zip(keys, writes)]
    for result in filter(None, results):
        log.stage_advance(result[0].rows)
    todo = [i for i, r in enumerate(results) if r is None]
    for i, result in zip(todo, _write_files(stage, [writes[i] for i in todo], config, log, meanwhile)):
        results[i] = result
        if keys[i]:
            files.store(keys[i], *result)
    collector = StatsCollector(seed, tokenizer)
    for _, part in results:
        collector.merge(part)
    return [f for f, _ in results], collector


def _start_composition(stage: Path, jobs: list[RenderJob], stats: dict[str, RenderStats], config: BuildConfig,
                       cache_dir: Path | None, started: list) -> None:
    """While worker processes write the splits, the card's composition picture is drawn in a thread here
    (it needs only the train tasks' rows); else later, with the rest of the card (beside this process
    writing, the thread would only contend for the GIL). Its future goes into ``started``."""
    if config.plots and pictures_possible():
        tasks = {j.task.name: {"role": j.role, "rows": stats[j.task.name].rows, "cluster": j.task.cluster,
                               "submixture": j.task_source} for j in jobs}  # what the manifest will say of them
        started.append(card_plots.start_composition(stage, {"tasks": tasks}, cache_dir))


def _write_files(stage: Path, writes: list[writer.ShardWrite], config: BuildConfig, log: Progress,
                 meanwhile: Callable[[], object]) -> list[tuple[writer.DataFile, StatsCollector]]:
    """Write these files here, or one process per file when there are several files and workers."""
    seed, tokenizer = config.seed, config.recipe.prompt.tokenizer
    rows = sum(w.stop - w.start for w in writes)
    workers = _local_workers(config, rows)
    if not engine.use_pool(workers, len(writes), rows):
        return [_write_file(stage, seed, tokenizer, w, log.stage_advance) for w in writes]
    meanwhile()
    job = functools.partial(_write_file, stage, seed, tokenizer)
    return engine.process_map(job, writes, workers, on_done=lambda r: log.stage_advance(r[0].rows))


def _write_file(stage: Path, seed: int, tokenizer: str | None, w: writer.ShardWrite,
                advance=None) -> tuple[writer.DataFile, StatsCollector]:
    """One split file and the statistics of its rows (in a worker process, or here with ``advance``
    reporting progress table by table)."""
    collector = StatsCollector(seed, tokenizer)
    collector.seek(w.split, w.start)

    def observe(split: str, table) -> None:
        collector.add(split, table)
        if advance is not None:
            advance(table.num_rows)
    return writer.write_shard(stage, w, observe), collector


def _describe(config: BuildConfig, sel: Selection, jobs: list[RenderJob],
              stats: dict[str, RenderStats], shares: dict[str, mixer.TaskShare], decontaminated: dict[str, int],
              files: list[writer.DataFile], held: set[str], removed: set[str]) -> Manifest:
    """Stage 6: mixture.json, the record of everything above."""
    records = [asdict(f) for f in files]
    return {
        "flanbuild_manifest": SCHEMA_VERSION,
        "fingerprint": fingerprint(records),
        "command": config.command,
        "config": _config_record(config, held, removed),
        "counts": {split: sum(f.rows for f in files if f.path.startswith(f"data/{split}-")) for split in writer.SPLITS},
        "decontaminated": {"total": sum(decontaminated.values()), "per_task": dict(sorted(decontaminated.items()))},
        "tasks": {j.task.name: _task_entry(j, sel.data[j.task.name], stats[j.task.name], shares.get(j.task.name),
                                           decontaminated.get(j.task.name, 0)) for j in jobs},
        "removed_tasks": sel.removed_tasks,
        "unselected_tasks": sel.unselected,
        "skipped": {**sel.skipped, **sel.unmatched},
        "files": records,
        "versions": _versions(),
    }


def _render(jobs: list[RenderJob], data: dict[str, SplitData], roles: dict[str, str], parts_dir: Path,
            cache_dir: Path | None, shard_keys: dict[str, list[str]], config: BuildConfig, log: Progress):
    """Shard the jobs, run them (or take them from the cache); returns per-task part paths and stats.

    ``shard_keys``: each task's cache keys, shard by shard, as the plan computed them (empty without a cache).
    """
    shards: list[engine.Shard] = []
    owner: list[str] = []
    for job in jobs:
        for n, piece in enumerate(engine.split_job(job)):
            path = parts_dir / f"{job.task.name}.{job.role}.{n:05d}{parts.SUFFIX}"
            key = shard_keys[job.task.name][n] if cache_dir else ""
            shards.append(engine.Shard(piece, data[job.task.name], path, len(shards), key, cache_dir))
            owner.append(job.task.name)
    remaining = {name: owner.count(name) for name in set(owner)}
    stats: dict[str, RenderStats] = {}
    total_rows = sum(len(j.indices) * (len(j.task.templates) if j.all_templates else 1) for j in jobs)
    log.start(len(jobs), total_rows=total_rows)

    def done(result: engine.ShardResult) -> None:
        name = owner[result.number]
        remaining[name] -= 1
        stats[name] = _merge(stats.get(name), result.stats)
        if remaining[name]:
            log.advance(name, result.stats.rows)
        else:
            log.task_done(name, roles[name], stats[name].rows, None, dropped=stats[name].dropped)

    results = engine.run(shards, engine=config.engine, workers=config.workers or engine.default_workers(total_rows),
                         scheduler=config.scheduler, on_done=done)
    paths: dict[str, list[Path]] = {}
    for result in results:  # in shard order, whatever finished first
        paths.setdefault(owner[result.number], []).append(result.path)
    cached = sum(r.cached for r in results)
    log(f"rendered {len(shards)} shard(s) of {len(jobs)} task split(s); {cached} from the cache")
    return paths, stats, len(shards), cached


def _drop_empty(jobs: list[RenderJob], stats: dict[str, RenderStats], sel: Selection, log: Progress) -> list[RenderJob]:
    """Tasks that rendered no row at all leave the build and are reported as skipped, with the reason."""
    kept = []
    for job in jobs:
        st = stats.get(job.task.name)
        if st is not None and st.rows == 0 and len(job.indices):
            reason = (f"rendered 0 rows: all {st.dropped} renders of its {len(job.indices)} {job.role} rows gave an "
                      f"empty input or target (or failed)")
            sel.skipped[job.task.name] = reason
            log.skip(job.task.name, reason)
        else:
            kept.append(job)
    return kept


def _decontaminate(jobs: list[RenderJob], data: dict[str, SplitData], paths: dict[str, list[Path]],
                   stats: dict[str, RenderStats], ngram: int, log: Progress,
                   shard_keys: dict[str, list[str]] | None = None, cache_dir: Path | None = None,
                   workers: int = 1) -> tuple[dict[str, int], dict[str, tuple[np.ndarray, ...]]]:
    """Find the train rows that overlap eval; returns removals per task and, per task, the row positions
    of each part the writer leaves out (the parts themselves are not touched).

    With shard keys and a cache, each task's outcome is cached (pipeline/decontam_cache.py): a task
    whose parts and the eval side are unchanged re-applies it, and the eval index is built only if some
    task needs it."""
    eval_jobs = [j for j in jobs if j.role == "eval"]
    train_jobs = [j for j in jobs if j.role == "train"]
    log.stage("decontaminating", total=len(train_jobs),
              detail=f"{len(train_jobs)} train task(s) against the inputs of {len(eval_jobs)} eval task(s)"
                     + (f" and their {ngram}-grams" if ngram else ""))
    keys = shard_keys if shard_keys and cache_dir is not None else {}
    cache = decontam_cache.DecontamCache(cache_dir if keys else None)
    eval_key = decontam_cache.eval_key((k for j in eval_jobs for k in keys[j.task.name]), ngram) if keys else ""
    results, todo = _cached_outcomes(train_jobs, paths, keys, cache, eval_key, log)
    if todo:
        index = _eval_index(eval_jobs, data, paths, ngram, cache, eval_key, workers)
        if not index.empty:
            for (job, task_key), (result, to_cache) in zip(todo, _check_tasks(index, [paths[j.task.name] for j, _ in todo],
                                                                                workers, log)):
                results[job.task.name] = result
                if keys:
                    cache.store_task(task_key, to_cache)
    elif keys:
        cache.index_used(eval_key)
    removed: dict[str, int] = {}
    for job in train_jobs:  # in task order, whatever order the outcomes came in
        if job.task.name in results:
            _remove(job.task.name, results[job.task.name], stats[job.task.name], removed, log)
    return removed, {name: dropped for name, (_, _, dropped) in results.items()}


def _cached_outcomes(train_jobs: list[RenderJob], paths: dict[str, list[Path]], keys: dict[str, list[str]],
                     cache: "decontam_cache.DecontamCache", eval_key: str, log: Progress):
    """The outcomes the decontamination cache holds for these parts, and the (job, task key) to check."""
    results: dict[str, decontam_cache.Outcome] = {}
    todo: list[tuple[RenderJob, str]] = []
    for job in train_jobs:
        task_key = decontam_cache.task_key(eval_key, keys[job.task.name]) if keys else ""
        cached = cache.task(task_key) if keys else None
        result = decontam_cache.apply_cached(paths[job.task.name], cached) if cached is not None else None
        if result is None:
            todo.append((job, task_key))
        else:
            results[job.task.name] = result
            log.stage_advance(1)
    return results, todo


PARALLEL_CHECK_RATIO = 8  # without n-grams: train rows per eval input from which parts are checked in workers
PARALLEL_CHECK_ROWS = 2_000_000  # ... and train rows from which that beats starting the pool (bench: 1M rows
# checked in 0.24 s here and 0.39 s in two workers, 5M in 1.22 s and 0.86 s)


def _check_tasks(index: decontam.EvalIndex, task_paths: list[list[Path]], workers: int, log: Progress) -> list:
    """Each task's (outcome, outcome to cache) against the index. Parts are checked in worker processes,
    which receive the index once each, when there are several workers and enough rows, and the work per
    row outweighs sending the index: always with the n-gram check (a regular expression and a word split
    per row), else only with millions of train rows that outnumber the eval inputs many times (most rows
    skip the regular expression, so starting the pool and sending a large index costs more than the work)."""
    rows = sum(parts.num_rows(p) for paths in task_paths for p in paths)
    flat = [p for paths in task_paths for p in paths]
    heavy = (index.n and len(index.ngrams)) or rows >= max(PARALLEL_CHECK_ROWS, PARALLEL_CHECK_RATIO * len(index.inputs))
    if heavy and engine.use_pool(workers, len(flat), rows):
        checked = iter(engine.process_map(decontam_cache.check_part, flat, workers,
                                          initializer=(decontam_cache.use_index, (index,))))
    else:
        checked = (decontam_cache.check(p, index) for p in flat)
    out = []
    for paths in task_paths:  # each task's parts, in order
        out.append(decontam_cache.task_outcome([next(checked) for _ in paths]))
        log.stage_advance(1)
    return out


def _remove(name: str, result: "decontam_cache.Outcome", st: RenderStats, removed: dict[str, int], log: Progress) -> None:
    """A task's decontamination outcome in its statistics (rows, per template, per template type)."""
    kept, gone, _ = result
    if not gone:
        return
    removed[name] = sum(gone.values())
    st.rows = kept
    for (template_id, template_type), n in gone.items():
        st.per_template[template_id] -= n
        st.per_type[template_type] -= n
    log(f"decontaminated {name}: removed {removed[name]} train rows that overlap eval")


EVAL_INDEX_PIECE_ROWS = 50_000  # eval rows normalised per task of a worker (eval parts can be 10x a shard)


def _eval_index(eval_jobs: list[RenderJob], data: dict[str, SplitData], paths: dict[str, list[Path]], ngram: int,
                cache: "decontam_cache.DecontamCache", eval_key: str, workers: int) -> decontam.EvalIndex:
    """What train rows are checked against; the normalised eval inputs come from the cache when there,
    else are computed part by part (in worker processes when there are several)."""
    texts = _eval_texts(eval_jobs, data) if ngram else ()
    cached = cache.index(eval_key, texts, ngram) if eval_key else None
    if cached is not None:
        return cached
    sizes = [(p, parts.num_rows(p)) for j in eval_jobs for p in paths[j.task.name]]
    pieces = [(p, a, min(a + EVAL_INDEX_PIECE_ROWS, n)) for p, n in sizes for a in range(0, n, EVAL_INDEX_PIECE_ROWS)]
    if engine.use_pool(workers, len(pieces), sum(n for _, n in sizes)):
        normalised = engine.process_map(decontam.normalised_inputs, pieces, workers)
    else:
        normalised = [decontam.normalised_inputs(piece) for piece in pieces]
    index = decontam.EvalIndex.from_normalised(normalised, texts, ngram)
    if eval_key:
        cache.store_index(eval_key, index)
    return index


def _config_record(config: BuildConfig, held: set[str], removed: set[str]) -> dict:
    """The resolved configuration, as mixture.json records it."""
    recipe, mix = config.recipe, config.mix
    return {
        "mixture": recipe.name,
        "mixture_file": recipe.origin,
        "seed": config.seed,
        "heldout": sorted(held),
        "removed_clusters": sorted(removed),
        "extra_removals": mix.extra_removals,
        "submixtures": [asdict(s) for s in recipe.submixtures],
        "prompt": asdict(recipe.prompt),
        "task_cap_override": mix.task_cap,
        "rate_cap_override": mix.rate_cap,
        "temperature": mix.temperature,
        "task_weights": dict(sorted(mix.task_weights.items())),
        "cluster_weights": dict(sorted(mix.cluster_weights.items())),
        "train_size": mix.train_size,
        "eval_cap": mix.eval_cap,
        "max_epochs": mix.max_epochs,
        "decontaminate": {"exact": True, "ngram": recipe.decontaminate_ngram},
        "data_dirs": [str(d) for d in config.data_dirs],
        "catalogs": [str(c) for c in config.catalogs],
        "niv2_dir": str(config.niv2_dir) if config.niv2_dir else None,
        "promptsource_dir": str(config.promptsource_dir) if config.promptsource_dir else None,
        "tasks": list(config.tasks),
        "clusters": list(config.clusters),
        "strict": config.strict,
        "shard_rows": config.shard_rows,
    }


def _merge(a: RenderStats | None, b: RenderStats) -> RenderStats:
    """Statistics of a task's shards added up."""
    if a is None:
        return b
    return RenderStats(a.rows + b.rows, a.dropped + b.dropped,
                       {k: a.per_template.get(k, 0) + b.per_template.get(k, 0) for k in a.per_template.keys() | b.per_template.keys()},
                       {k: a.per_type.get(k, 0) + b.per_type.get(k, 0) for k in a.per_type.keys() | b.per_type.keys()})


def _eval_texts(eval_jobs: list[RenderJob], data: dict[str, SplitData]):
    """The source text of every eval example: its string fields (not the template wording)."""
    for job in eval_jobs:
        split = data[job.task.name]
        mapper = ExampleMapper(job.task, split.features)
        for chunk, rows in split.rows(job.indices):
            for idx, row in zip(chunk, rows):
                example = mapper(row, f"row {int(idx)} of {split.origin}")
                if example is not None:
                    yield from (v for k, v in example.context.items() if isinstance(v, str) and k != "answer")


def _distinct(sorted_indices: np.ndarray) -> int:
    return int(len(sorted_indices) and 1 + np.count_nonzero(np.diff(sorted_indices)))


def _task_entry(job: RenderJob, split: SplitData, stats: RenderStats, share: mixer.TaskShare | None,
                decontaminated: int) -> TaskRecord:
    task: Task = job.task
    entry: TaskRecord = {
        "role": job.role,
        "cluster": task.cluster,
        "submixture": job.task_source,
        "provider": task.provider,
        "source": split.origin,
        "metric": task.metric,
        "templates": len(task.templates),
        "inverted_templates": sorted(t.id for t in task.templates if t.inverted),
        "examples": _distinct(job.indices),
        "rows": stats.rows,
        "dropped": stats.dropped,
        "decontaminated": decontaminated,
        "rows_per_template": {str(k): v for k, v in sorted(stats.per_template.items())},
        "rows_per_type": dict(sorted(stats.per_type.items())),
    }
    if split.read:  # only part of the source split is read (source.max_rows): the rule, for a reader to repeat
        entry["read"] = split.read
    if task.provider == "promptsource":
        entry["template_info"] = {str(t.id): t.info for t in task.templates if hasattr(t, "info")}
    if share is not None:
        entry.update(available=share.available, used=share.used, rate=round(share.rate, 6),
                     share=round(share.share, 6), requested=share.count,
                     epochs=round(share.count / share.used, 4) if share.used else 0.0)
    return entry
