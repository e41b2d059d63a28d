"""``flanbuild compare``: in-context learning vs instruction tuning vs parameter-efficient tuning.

On a mixture with a held-out cluster, one command runs the settings the FLAN / prompt-tuning papers
compare, all scored the same way on the held-out eval split:

* ``base-0shot``: the base model, zero-shot;
* ``base-kshot``: the base model with K in-context exemplars (``--shots``);
* ``full``: instruction tuning of all weights on the train split (FLAN);
* ``lora``: instruction tuning with LoRA adapters;
* ``prompt-tuning``: soft prompt only, the model frozen;
* (``prefix-tuning`` and ``p-tuning`` on request).

It writes ``OUT/results.json`` and ``OUT/results.md`` (mean and best template per task and per
cluster for every setting), ``OUT/comparison.png``, and keeps each run (``OUT/runs/<setting>``) and
each evaluation (``OUT/evals/<setting>.json``).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from flanbuild.errors import FlanbuildError

SETTINGS = ("base-0shot", "base-kshot", "full", "lora", "prompt-tuning", "prefix-tuning", "p-tuning")
DEFAULT_SETTINGS = ("base-0shot", "base-kshot", "full", "lora", "prompt-tuning")
TRAINED = {"full": None, "lora": "lora", "prompt-tuning": "prompt-tuning", "prefix-tuning": "prefix-tuning",
           "p-tuning": "p-tuning"}


@dataclass
class CompareConfig:
    data: str
    model: str = "smollm2-135m"
    out: str = "out/experiment"
    settings: tuple[str, ...] = DEFAULT_SETTINGS
    shots: int = 2
    max_examples: int | None = 2  # per held-out task (every template of each)
    tasks: tuple[str, ...] | None = None
    max_steps: int = 10
    max_rows: int | None = None
    batch_size: int = 4
    max_input_len: int = 192
    max_target_len: int = 32
    max_new_tokens: int | None = 32
    scoring: str = "flan"
    lr: dict[str, float] = field(default_factory=dict)  # setting -> learning rate (default: finetune's)
    lora_r: int = 8
    num_virtual_tokens: int = 20
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    quiet: bool = False


def _validate(cfg: CompareConfig) -> None:
    unknown = [s for s in cfg.settings if s not in SETTINGS]
    if unknown or not cfg.settings:
        raise FlanbuildError(f"--settings: unknown {', '.join(unknown) or '(none)'} (known: {', '.join(SETTINGS)})")
    if "base-kshot" in cfg.settings and cfg.shots < 1:
        raise FlanbuildError("--shots must be >= 1 for base-kshot")
    if cfg.max_steps < 1:
        raise FlanbuildError("--max-steps must be >= 1")


def _train(cfg: CompareConfig, setting: str, out: Path, log) -> dict:
    from flanbuild.finetune import FinetuneConfig, finetune

    run = out / "runs" / setting
    ft = FinetuneConfig(
        data=cfg.data, model=cfg.model, out=str(run), max_steps=cfg.max_steps, max_rows=cfg.max_rows,
        batch_size=cfg.batch_size, max_input_len=cfg.max_input_len, max_target_len=cfg.max_target_len,
        seed=cfg.seed, save_steps=0, overwrite=True, device=cfg.device, threads=cfg.threads, quiet=cfg.quiet,
        peft=TRAINED[setting], lr=cfg.lr.get(setting), lora_r=cfg.lora_r, num_virtual_tokens=cfg.num_virtual_tokens,
    )
    log(f"[compare] {setting}: training {cfg.model} for {cfg.max_steps} steps -> {run}")
    return finetune(ft)


def _evaluate(cfg: CompareConfig, setting: str, model: str, shots: int, out: Path, log) -> dict:
    from flanbuild.finetune import EvalConfig, evaluate

    ev = EvalConfig(
        data=cfg.data, model=model, out=str(out / "evals" / f"{setting}.json"), max_examples=cfg.max_examples,
        tasks=cfg.tasks, batch_size=max(4, cfg.batch_size * 4), max_input_len=cfg.max_input_len * (1 + shots),
        max_new_tokens=cfg.max_new_tokens, scoring=cfg.scoring, shots=shots, seed=cfg.seed, device=cfg.device,
        threads=cfg.threads, quiet=cfg.quiet,
    )
    log(f"[compare] {setting}: evaluating {model}{f' ({shots}-shot)' if shots else ''}")
    return evaluate(ev)


def _summary(res: dict, train: dict | None) -> dict:
    return {
        "tasks": {t: {"cluster": v["cluster"], "metric": v["metric"], "mean": v["score_mean"], "best": v["score_best"],
                      "best_template": v["best_template"], "examples": v["num_examples"]}
                  for t, v in res["tasks"].items()},
        "clusters": {c: {"mean": v["score_mean"], "best": v["score_best"], "tasks": v["num_tasks"]}
                     for c, v in res["clusters"].items()},
        "overall": res["overall"],
        "eval_seconds": res["seconds"],
        "train": None if train is None else {
            k: train.get(k) for k in ("global_step", "trainable_parameters", "parameters", "loss_before", "loss_after",
                                      "train_seconds", "learning_rate", "device")},
    }


def markdown(results: dict) -> str:
    """Tables: per cluster and per task, mean / best template, one column pair per setting."""
    settings = list(results["settings"])
    head = "| {} | " + " | ".join(f"{s} mean | {s} best" for s in settings) + " |"
    rule = "|---|" + "---:|---:|" * len(settings)

    def cells(key, name):
        vals = []
        for s in settings:
            v = results["settings"][s][key].get(name)
            vals += [f"{100 * v['mean']:.1f}", f"{100 * v['best']:.1f}"] if v else ["-", "-"]
        return " | ".join(vals)

    first = results["settings"][settings[0]]
    lines = [f"# Comparison on {results['data']} ({results['model']})", "", results["config_line"], "",
             "## Clusters", "", head.format("cluster"), rule]
    lines += [f"| {c} | {cells('clusters', c)} |" for c in first["clusters"]]
    lines += ["", "## Tasks (metric)", "", head.format("task"), rule]
    lines += [f"| {t} ({v['metric']}) | {cells('tasks', t)} |" for t, v in first["tasks"].items()]
    lines += ["", "## Runs", "", "| setting | steps | trainable params | loss before -> after | train s | eval s |",
              "|---|---:|---:|---|---:|---:|"]
    for s in settings:
        r = results["settings"][s]
        t = r["train"]
        if t:
            lines.append(f"| {s} | {t['global_step']} | {t['trainable_parameters']:,} | "
                         f"{t['loss_before']:.3f} -> {t['loss_after']:.3f} | {t['train_seconds']:.0f} | {r['eval_seconds']:.0f} |")
        else:
            lines.append(f"| {s} | - | - | - | - | {r['eval_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    """Grouped bars: per held-out cluster, mean (solid) and best template (light) per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(results["settings"])
    clusters = list(results["settings"][settings[0]]["clusters"])
    fig, ax = plt.subplots(figsize=(max(7, 1.6 * len(settings) * max(1, len(clusters))), 4))
    width = 0.8 / len(settings)
    for j, s in enumerate(settings):
        cs = results["settings"][s]["clusters"]
        xs = [i + j * width for i in range(len(clusters))]
        best = [100 * cs[c]["best"] for c in clusters]
        mean = [100 * cs[c]["mean"] for c in clusters]
        ax.bar(xs, best, width, color=f"C{j}", alpha=0.35)
        ax.bar(xs, mean, width, color=f"C{j}", label=s)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(clusters))], clusters)
    ax.set_ylabel("score (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{results['model']} on held-out {', '.join(clusters)}: mean over templates (solid), "
                 "best template (light)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_compare(cfg: CompareConfig) -> dict:
    _validate(cfg)
    t0 = time.time()
    log = (lambda *a: None) if cfg.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    out = Path(cfg.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    per: dict[str, dict] = {}
    for setting in cfg.settings:
        if setting in TRAINED:
            train = _train(cfg, setting, out, log)
            res = _evaluate(cfg, setting, str(out / "runs" / setting), 0, out, log)
        else:
            train = None
            res = _evaluate(cfg, setting, cfg.model, cfg.shots if setting == "base-kshot" else 0, out, log)
        per[setting] = _summary(res, train)
    cfg_dict = {k: v for k, v in vars(replace(cfg)).items()}
    results = {
        "model": cfg.model, "data": cfg.data, "settings": per, "config": cfg_dict,
        "config_line": (f"steps {cfg.max_steps}, batch {cfg.batch_size}, max input {cfg.max_input_len} tokens, "
                        f"{cfg.max_examples or 'all'} examples per task (every template), {cfg.shots}-shot for "
                        f"base-kshot, scoring {cfg.scoring}, seed {cfg.seed}"),
        "seconds": round(time.time() - t0, 1),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    (out / "results.md").write_text(markdown(results) + f"\nwall time {results['seconds']:.0f}s\n", encoding="utf-8")
    plot(results, out / "comparison.png")
    log(f"[compare] wrote {out / 'results.md'}, {out / 'results.json'}, {out / 'comparison.png'} "
        f"in {results['seconds']:.0f}s")
    return results
