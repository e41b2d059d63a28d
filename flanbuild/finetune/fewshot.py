"""In-context exemplars for ``evaluate --shots K`` (no torch).

For each evaluated row, K exemplars ``(inputs, targets)`` of the same task are drawn, seeded by
``(seed, example_id, template_id)`` so a rerun shows the same exemplars:

* from the task's rows in the ``train`` split of ``--shots-data`` (default: the evaluated mixture),
  preferring rows rendered with the same template;
* when that split has no row of the task (a held-out task has none in its own mixture), from the
  evaluated split itself: other examples of the task, same template.

An exemplar never has the evaluated row's ``example_id`` (so never the row itself, in any template),
and the K exemplars are distinct examples. Few-shot rows of the pool (``fs_*`` template types) are not
used as exemplars.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

from flanbuild.errors import FlanbuildError


@dataclass
class ExemplarPool:
    """Candidate exemplars per task and per (task, template id)."""

    source: str  # "train" | "eval"
    inputs: list[str]
    targets: list[str]
    example_ids: list[str]
    by_task: dict[str, list[int]] = field(default_factory=dict)
    by_template: dict[tuple[str, int], list[int]] = field(default_factory=dict)

    @classmethod
    def from_rows(cls, rows: dict[str, list], source: str, tasks=None) -> ExemplarPool:
        pool = cls(source, rows["inputs"], rows["targets"], rows["example_id"])
        for i, (task, tid, ttype) in enumerate(zip(rows["task_name"], rows["template_id"], rows["template_type"])):
            if str(ttype).startswith("fs") or (tasks is not None and task not in tasks):
                continue
            pool.by_task.setdefault(task, []).append(i)
            pool.by_template.setdefault((task, tid), []).append(i)
        return pool

    def draw(self, task: str, template_id: int, example_id: str, k: int, seed: int) -> list[tuple[str, str]]:
        cands = self.by_template.get((task, template_id)) or self.by_task.get(task) or []
        rng = random.Random(_seed(seed, example_id, template_id))
        order = list(cands)
        rng.shuffle(order)
        chosen, seen = [], {example_id}
        for i in order:
            if self.example_ids[i] in seen:
                continue
            seen.add(self.example_ids[i])
            chosen.append((self.inputs[i], self.targets[i]))
            if len(chosen) == k:
                break
        return chosen


def _seed(seed: int, example_id: str, template_id: int) -> int:
    return int.from_bytes(hashlib.sha1(f"{seed}|{example_id}|{template_id}".encode()).digest()[:8], "big")


def build_pools(eval_rows: dict[str, list], train_rows: dict[str, list] | None, tasks: set[str]) -> dict[str, ExemplarPool]:
    """task -> pool: the train rows of the task when there are any, else the evaluated split."""
    train_pool = ExemplarPool.from_rows(train_rows, "train", tasks) if train_rows else None
    eval_pool = ExemplarPool.from_rows(eval_rows, "eval", tasks)
    return {t: (train_pool if train_pool and t in train_pool.by_task else eval_pool) for t in tasks}


def exemplars_for(idx: list[int], rows: dict[str, list], pools: dict[str, ExemplarPool], k: int, seed: int) -> dict[int, list]:
    """Row index -> its K exemplars; FlanbuildError when a task has fewer than K other examples."""
    out = {}
    for i in idx:
        task = rows["task_name"][i]
        shots = pools[task].draw(task, rows["template_id"][i], rows["example_id"][i], k, seed)
        if len(shots) < k:
            raise FlanbuildError(f"--shots {k}: task {task!r} has only {len(shots)} other example(s) to draw from")
        out[i] = shots
    return out
