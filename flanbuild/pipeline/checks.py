"""No silent no-ops: names a build is given must exist, and limits that change what was asked are reported.

* ``check_names``: every task and cluster named in ``--tasks``, ``--clusters``, ``--heldout``,
  ``--task-weight``, ``--cluster-weight`` and the recipe's submixtures exists (else one-line error with the
  closest known name);
* ``plan_notes``: one line each when a weight names a task or cluster that has no training rows in this
  build, and when the train split gets fewer rows than ``--train-size`` asked for (and which limit did it).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from flanbuild.errors import unknown


def check_names(registry, config) -> None:
    """Raise FlanbuildError for the first task or cluster name the build config gives that does not exist."""
    tasks, clusters = registry.tasks, registry.clusters
    mix = config.mix
    named_tasks = [("task", n, " in --tasks") for n in config.tasks]
    named_tasks += [("task", n, " in --task-weight") for n in mix.task_weights]
    named_clusters = [("cluster", n, " in --clusters") for n in config.clusters]
    named_clusters += [("held-out cluster", n, "") for n in mix.heldout or getattr(config.recipe, "heldout", ())]
    named_clusters += [("cluster", n, " in --cluster-weight") for n in mix.cluster_weights]
    for sub in config.recipe.submixtures:
        where = f" in submixture {sub.name} of mixture {config.recipe.name}"
        # what a submixture selects must exist; what it excludes may be absent (a recipe serves many catalogs)
        named_tasks += [("task", n, where) for n in sub.tasks]
        named_clusters += [("cluster", n, where) for n in sub.clusters]
    for kind, name, where in named_tasks:
        if name not in tasks:
            raise unknown(kind, name, tasks, where)
    for kind, name, where in named_clusters:
        if name not in clusters:
            raise unknown(kind, name, clusters, where)
    tokenizer = getattr(config.recipe.prompt, "tokenizer", None)
    if tokenizer:  # offline and not cached: say so now, not after rendering (and without 80 s of retries)
        from flanbuild.sources import offline

        offline.require_local(tokenizer, "tokenizer")


def plan_notes(config, cluster_of: Mapping[str, str], roles: Mapping[str, str], shares: Mapping) -> list[str]:
    """Lines to print after planning: weights that change nothing here, and a train size the limits cut."""
    mix = config.mix
    notes = []
    trained = {n for n, r in roles.items() if r == "train"}
    for name in sorted(mix.task_weights):
        if name not in trained:
            why = "is held out" if roles.get(name) == "eval" else "has no training rows in this build"
            notes.append(f"note: --task-weight {name}={mix.task_weights[name]:g} changes nothing: {name} {why}")
    trained_clusters = {cluster_of[n] for n in trained}
    for name in sorted(mix.cluster_weights):
        if name not in trained_clusters:
            notes.append(f"note: --cluster-weight {name}={mix.cluster_weights[name]:g} changes nothing: "
                         f"no task of cluster {name} has training rows in this build")
    if mix.train_size is not None and shares:
        got = sum(s.count for s in shares.values())
        if got < mix.train_size:
            names = sorted(shares)
            asked = _apportion(np.array([shares[n].share for n in names]), mix.train_size)
            cut = [n for n, a in zip(names, asked) if shares[n].count < a]
            example = ", ".join(cut[:3]) + (f" and {len(cut) - 3} more" if len(cut) > 3 else "")
            notes.append(f"note: --train-size {mix.train_size:,} asked, the train split gets {got:,} rows: "
                         f"--max-epochs {mix.max_epochs:g} limits {len(cut)} task(s) ({example}) to "
                         f"{mix.max_epochs:g}x their rows (raise --max-epochs, 0 = no limit, or add data)")
    return notes


def _apportion(shares: np.ndarray, total: int) -> np.ndarray:
    from flanbuild.pipeline.mixer import _apportion as apportion

    return apportion(shares, total)
