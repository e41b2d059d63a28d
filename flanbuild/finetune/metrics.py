"""Metrics and FLAN-style aggregation (pure Python; ``rouge_score`` is imported lazily).

All scores are fractions in [0, 1]; the printed table shows them as percentages.

* Classification rows (non-empty ``options``): ``accuracy`` (the option with the highest total
  log-likelihood is the target) and ``accuracy_norm`` (highest log-likelihood divided by the
  option's length in characters).
* Generation rows: ``exact_match`` and token ``f1`` after SQuAD normalisation (lower case, drop
  punctuation and the articles a/an/the, collapse white space), and ``rougeL`` (ROUGE-L F-measure
  from ``rouge_score``, no stemming). Each is the maximum over the row's ``references``.
* Aggregation (FLAN paper): per template the mean over its rows; per task the mean over its
  templates and the best template; per cluster the mean over its tasks.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from statistics import fmean

#: Task-card metric names (``metric:`` in tasks/<task>.yaml) -> the metric key reported here.
CARD_METRIC = {
    "accuracy": "accuracy",
    "exact_match": "exact_match",
    "f1": "f1",
    "rouge": "rougeL",
    "rougeL": "rougeL",
    "bleu": "bleu",  # corpus BLEU (sacrebleu) per template
    "cot_exact_match": "cot_exact_match",
}
DEFAULT_PRIMARY = {"classification": "accuracy", "generation": "rougeL"}
#: Metrics computed over a template's rows together (not a mean of per-row values).
CORPUS_METRICS = ("bleu",)

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1 (both empty after normalisation -> 1.0, one empty -> 0.0)."""
    pred = normalize_answer(prediction).split()
    ref = normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = Counter(pred) & Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred)
    recall = same / len(ref)
    return 2 * precision * recall / (precision + recall)


_ROUGE = None


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (``rouge_score``'s tokenizer: lower case, alphanumeric tokens, no stemming)."""
    global _ROUGE
    if _ROUGE is None:
        from rouge_score import rouge_scorer

        _ROUGE = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return float(_ROUGE.score(reference, prediction)["rougeL"].fmeasure)


def generation_scores(prediction: str, references: list[str]) -> dict[str, float]:
    """EM, F1 and ROUGE-L of one prediction, each the maximum over the references."""
    refs = list(references) or [""]
    return {
        "exact_match": max(exact_match(prediction, r) for r in refs),
        "f1": max(token_f1(prediction, r) for r in refs),
        "rougeL": max(rouge_l(prediction, r) for r in refs),
    }


def classification_scores(option_logprobs: list[float], options: list[str], target: str) -> dict[str, float]:
    """Rank classification of one row from the summed log-likelihood of each option."""
    if not options:
        raise ValueError("classification row without options")
    best = max(range(len(options)), key=lambda i: option_logprobs[i])
    best_norm = max(range(len(options)), key=lambda i: option_logprobs[i] / max(1, len(options[i])))
    return {
        "accuracy": float(options[best] == target),
        "accuracy_norm": float(options[best_norm] == target),
    }


def template_key(template_id: int, template_type: str) -> str:
    return f"{template_id}:{template_type}" if template_type else str(template_id)


def corpus_bleu(predictions: list[str], references: list[list[str]]) -> float:
    """Corpus BLEU (sacrebleu defaults: 13a tokenisation, exponential smoothing off) as a fraction.

    Rows may have different numbers of references: shorter lists are padded with their own first
    reference, which changes neither the clipped n-gram counts nor the closest reference length.
    """
    import sacrebleu

    if not predictions:
        return 0.0
    refs = [list(r) or [""] for r in references]
    width = max(len(r) for r in refs)
    streams = [[r[j] if j < len(r) else r[0] for r in refs] for j in range(width)]
    return float(sacrebleu.corpus_bleu(list(predictions), streams).score) / 100.0


def _collect(records: list[dict]) -> dict[str, dict]:
    by_task: dict[str, dict] = {}
    for r in records:
        t = by_task.setdefault(r["task"], {"cluster": r["cluster"], "templates": {}, "examples": set(), "rows": 0})
        key = template_key(r["template_id"], r["template_type"])
        tpl = t["templates"].setdefault(
            key, {"template_id": r["template_id"], "template_type": r["template_type"], "kind": r["kind"],
                  "rows": [], "predictions": [], "references": []}
        )
        if tpl["kind"] != r["kind"]:
            tpl["kind"] = "mixed"
        tpl["rows"].append(r["scores"])
        tpl["predictions"].append(r.get("prediction", ""))
        tpl["references"].append(r.get("references") or [""])
        t["examples"].add(r["example_id"])
        t["rows"] += 1
    return by_task


def _template_scores(tpl: dict, corpus: tuple[str, ...]) -> dict[str, float]:
    metrics = sorted({m for row in tpl["rows"] for m in row})
    scores = {m: fmean(row[m] for row in tpl["rows"] if m in row) for m in metrics}
    if tpl["kind"] == "generation":
        for m in corpus:
            if m == "bleu":
                scores["bleu"] = corpus_bleu(tpl["predictions"], tpl["references"])
    return scores


def _primary(kind: str, card_metric: str, templates: dict, counted: list[str]) -> str:
    primary = CARD_METRIC.get(card_metric, DEFAULT_PRIMARY.get(kind, "accuracy"))
    if kind == "generation" and any("cot_exact_match" in templates[k]["scores"] for k in counted):
        primary = "cot_exact_match"  # chain of thought: the extracted final answer decides
    if not any(primary in templates[k]["scores"] for k in counted):
        primary = DEFAULT_PRIMARY.get(kind, "accuracy")
    return primary


def _mean_and_best(templates: dict, counted: list[str]) -> tuple[dict, dict]:
    """Per metric: the mean and the maximum over the counted templates that report it."""
    names = sorted({m for k in counted for m in templates[k]["scores"]})
    values = {m: [templates[k]["scores"][m] for k in counted if m in templates[k]["scores"]] for m in names}
    return {m: fmean(v) for m, v in values.items()}, {m: max(v) for m, v in values.items()}


def _task_summary(name: str, t: dict, card_metric: str, inverted: set) -> dict:
    corpus = tuple(m for m in CORPUS_METRICS if CARD_METRIC.get(card_metric) == m)
    templates: dict[str, dict] = {}
    for key in sorted(t["templates"], key=lambda k: (t["templates"][k]["template_id"], k)):
        tpl = t["templates"][key]
        templates[key] = {
            "template_id": tpl["template_id"],
            "template_type": tpl["template_type"],
            "kind": tpl["kind"],
            "inverted": tpl["template_id"] in inverted,
            "num_rows": len(tpl["rows"]),
            "scores": _template_scores(tpl, corpus),
        }
    kinds = {v["kind"] for k, v in templates.items() if not v["inverted"]} or {v["kind"] for v in templates.values()}
    kind = "classification" if "classification" in kinds else ("generation" if "generation" in kinds else "mixed")
    counted = [k for k, v in templates.items() if v["kind"] == kind and not v["inverted"]]
    primary = _primary(kind, card_metric, templates, counted)
    mean, best = _mean_and_best(templates, counted)
    best_template = max(counted, key=lambda k: templates[k]["scores"].get(primary, float("-inf"))) if counted else None
    return {
        "cluster": t["cluster"],
        "kind": kind,
        "metric": primary,
        "score_mean": mean.get(primary, 0.0),
        "score_best": best.get(primary, 0.0),
        "best_template": best_template,
        "mean": mean,
        "best": best,
        "num_examples": len(t["examples"]),
        "num_rows": t["rows"],
        "num_templates": len(counted),
        "excluded_templates": [k for k in templates if k not in counted],
        "inverted_templates": {k: v["scores"] for k, v in templates.items() if v["inverted"]},
        "templates": templates,
    }


def aggregate(records: list[dict], task_metric: dict[str, str] | None = None,
              inverted: dict[str, set] | None = None) -> dict:
    """Aggregate per-row scores as in the FLAN paper.

    ``records``: one dict per evaluated row with keys ``task``, ``cluster``, ``template_id``,
    ``template_type``, ``example_id``, ``kind`` ("classification" | "generation") and ``scores``
    (metric -> value); generation rows may carry ``prediction`` and ``references`` (corpus BLEU).
    ``task_metric``: optional task -> card metric name (accuracy, exact_match, f1, rouge, bleu)
    choosing each task's primary metric; defaults: accuracy / rougeL. ``inverted``: task -> template
    ids of inverted templates (e.g. a translation template in the reverse direction).

    A task is a classification task when any of its templates is; only templates of the task's kind
    that are not inverted enter its mean/best. Inverted templates are reported (per template and
    under ``inverted_templates``) but never counted. Returns ``{"tasks", "clusters", "overall"}``.
    """
    task_metric = task_metric or {}
    inverted = inverted or {}
    by_task = _collect(records)
    tasks = {name: _task_summary(name, by_task[name], task_metric.get(name, ""), set(inverted.get(name, ())))
             for name in sorted(by_task)}
    clusters: dict[str, dict] = {}
    for name, t in tasks.items():
        clusters.setdefault(t["cluster"], {"tasks": []})["tasks"].append(name)
    for c in clusters.values():
        c["num_tasks"] = len(c["tasks"])
        c["score_mean"] = fmean(tasks[t]["score_mean"] for t in c["tasks"])
        c["score_best"] = fmean(tasks[t]["score_best"] for t in c["tasks"])
    clusters = dict(sorted(clusters.items()))
    overall = {
        "num_tasks": len(tasks),
        "task_mean": fmean(t["score_mean"] for t in tasks.values()) if tasks else 0.0,
        "cluster_mean": fmean(c["score_mean"] for c in clusters.values()) if clusters else 0.0,
    }
    return {"tasks": tasks, "clusters": clusters, "overall": overall}


def format_table(results: dict) -> str:
    """A readable fixed-width table of per-task and per-cluster scores (percentages)."""
    tasks, clusters = results["tasks"], results["clusters"]
    lines = []
    w = max([len("task")] + [len(n) for n in tasks]) + 2
    cw = max([len("cluster")] + [len(str(t["cluster"])) for t in tasks.values()] + [len(str(c)) for c in clusters]) + 2
    lines.append(f"{'task':<{w}}{'cluster':<{cw}}{'metric':<13}{'mean':>7}{'best':>7}  {'best tmpl':<12}{'tmpls':>6}{'examples':>9}  other (mean)")
    for name, t in tasks.items():
        other = "  ".join(f"{m} {100 * v:.1f}" for m, v in t["mean"].items() if m != t["metric"])
        lines.append(
            f"{name:<{w}}{str(t['cluster']):<{cw}}{t['metric']:<13}{100 * t['score_mean']:>7.1f}{100 * t['score_best']:>7.1f}"
            f"  {str(t['best_template']):<12}{t['num_templates']:>6}{t['num_examples']:>9}  {other}"
        )
    for name, t in tasks.items():
        for key, sc in (t.get("inverted_templates") or {}).items():
            shown = "  ".join(f"{m} {100 * v:.1f}" for m, v in sorted(sc.items()))
            lines.append(f"  {name} template {key} is inverted (reported, not counted): {shown}")
    lines.append("")
    lines.append(f"{'cluster':<{cw}}{'tasks':>6}{'mean':>7}{'best':>7}")
    for name, c in clusters.items():
        lines.append(f"{str(name):<{cw}}{c['num_tasks']:>6}{100 * c['score_mean']:>7.1f}{100 * c['score_best']:>7.1f}")
    o = results.get("overall", {})
    if o:
        lines.append(f"{'(all)':<{cw}}{o['num_tasks']:>6}{100 * o['task_mean']:>7.1f}")
    return "\n".join(lines)
