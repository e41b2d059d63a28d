"""The mixer: which clusters are held out, how much each training task contributes, which rows.

FLAN's recipe (Wei et al., 2021): hold out one task cluster for zero-shot evaluation (plus clusters
too close to it), and train on the rest mixed examples-proportionally, with each task capped at 30k
examples and a mixing-rate cap of 3k so that big datasets do not drown small ones. A mixture on disk
is a *materialised sample* of that distribution: task i contributes round(p_i * M) rows, where p_i
is its normalised rate and M the training-set size (by default the sum of the capped rates, so no
task repeats rows under the default recipe). Temperature and explicit weights change p_i; a task
asked for more rows than it has repeats its rows, each repeat with a fresh template draw.

Every decision is a function of counts and seeded keys, never of row contents, so it is made before
any row is rendered and does not depend on the order work happens in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from flanbuild.pipeline import seeding
from flanbuild.errors import FlanbuildError
from flanbuild.catalog.recipes import Submixture
from flanbuild.catalog.tasks import Cluster


@dataclass(frozen=True)
class MixConfig:
    """How training tasks are mixed. Rates and caps follow the FLAN paper by default."""

    heldout: tuple[str, ...] = ()  # clusters held out for evaluation; () = the recipe's (FLAN 2021: nli)
    extra_removals: bool = True  # FLAN's also-remove rules (e.g. NLI held out -> paraphrase removed)
    task_cap: int | None = None  # overrides every submixture's per-task example cap (0 = no cap)
    rate_cap: int | None = None  # overrides every submixture's mixing-rate cap (0 = no cap)
    temperature: float = 1.0  # rate -> rate ** (1 / T); T > 1 flattens the mix
    task_weights: Mapping[str, float] = field(default_factory=dict)  # multiply a task's rate
    cluster_weights: Mapping[str, float] = field(default_factory=dict)  # multiply its tasks' rates
    train_size: int | None = None  # rows in the train split; None = sum of the capped rates
    eval_cap: int = 0  # max examples per held-out task in eval (0 = all); each rendered with every template
    max_epochs: float = 10.0  # a task repeats its rows at most this often, however large its share (0 = no limit)

    def __post_init__(self) -> None:
        for name, value in (("task_cap", self.task_cap), ("rate_cap", self.rate_cap), ("eval_cap", self.eval_cap)):
            if value is not None and value < 0:
                raise FlanbuildError(f"{name} must be >= 0 (0 means no cap), got {value}")
        if self.temperature <= 0:
            raise FlanbuildError(f"temperature must be > 0, got {self.temperature}")
        if self.max_epochs < 0:
            raise FlanbuildError(f"max_epochs must be >= 0 (0 = no limit), got {self.max_epochs}")
        if self.train_size is not None and self.train_size <= 0:
            raise FlanbuildError(f"train size must be > 0, got {self.train_size}")
        for kind, weights in (("task", self.task_weights), ("cluster", self.cluster_weights)):
            for name, w in weights.items():
                if not w > 0:
                    raise FlanbuildError(f"{kind} weight for {name!r} must be > 0, got {w}")


def excluded_clusters(clusters: Mapping[str, Cluster], heldout: tuple[str, ...], extra_removals: bool) -> tuple[set[str], set[str]]:
    """(held-out clusters, clusters removed from training because of them)."""
    if not heldout:
        raise FlanbuildError("hold out at least one cluster (--heldout CLUSTER)")
    for name in heldout:
        if name not in clusters:
            raise FlanbuildError(f"unknown held-out cluster {name!r} (known: {', '.join(sorted(clusters))})")
    held = set(heldout)
    removed = set()
    if extra_removals:
        for name in heldout:
            removed |= set(clusters[name].also_remove)
    return held, removed - held


@dataclass(frozen=True)
class TaskShare:
    """A training task's place in the mix."""

    available: int  # usable source rows (after the card's filter)
    used: int  # after the per-task cap
    rate: float  # unnormalised mixing rate
    share: float  # normalised rate p_i
    count: int  # rows in the materialised train split (after the max_epochs limit)


def plan_train(available: Mapping[str, int], cluster_of: Mapping[str, str], cfg: MixConfig,
               group_of: Mapping[str, str] | None = None,
               submixtures: Mapping[str, Submixture] | None = None) -> dict[str, TaskShare]:
    """Per-task rates and row counts for the training split (tasks with no rows are left out).

    Each task belongs to a submixture (one default group when none are given). Inside a submixture,
    rates are examples-proportional with its caps; the submixtures' weights, renormalised over those
    that have tasks, split the mixture between them.
    """
    names = sorted(n for n, a in available.items() if a > 0)
    if not names:
        raise FlanbuildError("no training data: every training task was skipped or empty "
                             "(is --data-dir right? do the held-out clusters leave anything to train on?)")
    submixtures = submixtures or {"default": Submixture("default", rate_cap=3_000)}
    group_of = group_of or dict.fromkeys(names, next(iter(submixtures)))
    subs = [submixtures[group_of[n]] for n in names]
    used, capped = _capped([available[n] for n in names], subs, cfg)
    rates = capped ** (1.0 / cfg.temperature)
    rates *= [cfg.task_weights.get(n, 1.0) * cfg.cluster_weights.get(cluster_of[n], 1.0) for n in names]
    shares = _shares(rates, subs)
    total = cfg.train_size if cfg.train_size is not None else int(capped.sum())
    counts = _apportion(shares, total)
    if cfg.max_epochs:  # a small task with a big share would otherwise repeat its rows without bound
        counts = np.minimum(counts, np.floor(used * cfg.max_epochs).astype(np.int64))
    return {
        n: TaskShare(int(available[n]), int(u), float(r), float(s), int(c))
        for n, u, r, s, c in zip(names, used, rates, shares, counts)
    }


def _capped(available: list[int], subs: list[Submixture], cfg: MixConfig) -> tuple[np.ndarray, np.ndarray]:
    """(examples used, examples counted for the rate) per task: the task cap, then the rate cap (0 = none)."""
    def cap(n: float, limit: int) -> float:
        return min(n, limit) if limit else n

    task_caps = [cfg.task_cap if cfg.task_cap is not None else s.task_cap for s in subs]
    rate_caps = [cfg.rate_cap if cfg.rate_cap is not None else s.rate_cap for s in subs]
    used = np.array([cap(a, c) for a, c in zip(available, task_caps)], float)
    return used, np.array([cap(u, c) for u, c in zip(used, rate_caps)])


def _shares(rates: np.ndarray, subs: list[Submixture]) -> np.ndarray:
    """Normalised shares: examples-proportional inside each submixture, submixtures by their weights."""
    groups = sorted({s.name for s in subs})
    group_weight = {g: next(s for s in subs if s.name == g).weight for g in groups}
    total_weight = sum(group_weight.values())
    shares = np.zeros(len(rates))
    for g in groups:
        members = np.array([s.name == g for s in subs])
        shares[members] = rates[members] / rates[members].sum() * group_weight[g] / total_weight
    return shares


def _apportion(shares: np.ndarray, total: int) -> np.ndarray:
    """Integer counts proportional to shares that add up to ``total`` exactly (largest remainder)."""
    exact = shares * total
    counts = np.floor(exact).astype(np.int64)
    remainder = total - int(counts.sum())
    order = np.lexsort((np.arange(len(shares)), -(exact - counts)))  # ties broken by position: stable
    counts[order[:remainder]] += 1
    return counts


def select_rows(seed: int, task: str, role: str, valid: np.ndarray, used: int, count: int) -> np.ndarray:
    """Which source rows a task contributes: a seeded sample, sorted (repeats when count > used).

    Rows are ranked by a seeded key; the first ``used`` form the task's capped pool, and the first
    ``count`` of the pool are taken (the whole pool again for each full repeat). The result is sorted,
    so only *which* rows lead the ranking matters, not their order: a partition finds them in linear
    time instead of sorting every key (5M rows: 0.05 s instead of 0.9 s).
    """
    size = min(used, len(valid))
    if count <= 0 or size <= 0:
        return np.zeros(0, dtype=np.int64)
    full, rest = divmod(count, size)
    if size == len(valid) and not rest:  # every usable row, ``full`` times: the ranking decides nothing
        rows, copies = valid, full
    else:
        keys = seeding.index_keys(seed, ("select", task, role), valid)
        in_pool = _leading(keys, size)
        copies = np.where(_leading(keys, rest)[in_pool], full + 1, full) if rest else full
        rows = valid[in_pool]
    if len(rows) > 1 and not bool(np.all(rows[1:] >= rows[:-1])):  # usable rows come sorted; others are sorted here
        order = np.argsort(rows, kind="stable")
        rows, copies = rows[order], copies[order] if rest else copies
    return np.repeat(rows, copies)


def _leading(keys: np.ndarray, m: int) -> np.ndarray:
    """Mask of the ``m`` smallest keys. Keys of distinct indices are distinct (SplitMix64 is a bijection),
    so the m-th smallest key separates exactly m of them."""
    if m >= len(keys):
        return np.ones(len(keys), dtype=bool)
    if m <= 0:
        return np.zeros(len(keys), dtype=bool)
    return keys <= np.partition(keys, m - 1)[m - 1]


def ranked_pool(seed: int, task: str, role: str, valid: np.ndarray, size: int) -> np.ndarray:
    """The first ``size`` valid rows in seeded order (a task's capped pool; also its few-shot exemplars)."""
    keys = seeding.index_keys(seed, ("select", task, role), valid)
    return valid[np.argsort(keys, kind="stable")[:size]]


def select_eval(seed: int, task: str, valid: np.ndarray, cap: int) -> np.ndarray:
    """Eval examples of a held-out task: all of them, or a seeded sample of ``cap``."""
    if not cap or cap >= len(valid):
        return valid
    return np.sort(valid[_leading(seeding.index_keys(seed, ("select", task, "eval"), valid), cap)])
