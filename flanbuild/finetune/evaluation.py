"""``flanbuild evaluate``: zero-/few-shot scores of a model on a mixture split (imports torch).

The steps of :func:`run_evaluate`: select rows -> load the model and choose the conventions (chat
template, scoring) -> draw exemplars (``--shots``) -> rank-classify rows with options -> generate for
the others (chain-of-thought rows: rationale + extracted answer) -> aggregate per template, task and
cluster (metrics and inverted templates from the mixture's manifest) -> write results.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from flanbuild.errors import FlanbuildError
from flanbuild.finetune.config import PROMPT_SEPARATOR, SCORING, EvalConfig
from flanbuild.finetune.data import fingerprint, read_split, select_rows, task_info
from flanbuild.finetune.metrics import (
    aggregate,
    classification_scores,
    format_table,
    generation_scores,
    template_key,
)
from flanbuild.finetune.modeling import (
    CAUSAL,
    SEQ2SEQ,
    Codec,
    check_model_name,
    load_model,
    quiet_transformers,
    read_run_meta,
    resolve_chat,
)
from flanbuild.finetune.progress import Progress
from flanbuild.finetune.scoring import greedy_generate, requests, score_continuations, score_grouped

#: The chain-of-thought cluster: its generation rows are scored on the extracted final answer.
COT_CLUSTER = "chain_of_thought"
#: Default generation budget of a chain-of-thought row (a rationale is longer than an answer).
COT_MAX_NEW_TOKENS = 256

SCORING_NOTES = {
    "flan": "rank classification (FLAN/T5): summed log-likelihood of the option tokens + EOS after the "
            "prompt (inputs + separator, or the chat template)",
    "lm-eval": "rank classification (lm-evaluation-harness multiple_choice): summed log-likelihood of "
               "' ' + option (no delimiter through a chat template) after the inputs, no EOS",
}


def _validate(cfg: EvalConfig) -> None:
    checks = [
        (cfg.batch_size >= 1, "--batch-size must be >= 1"),
        (cfg.max_examples is None or cfg.max_examples >= 1, "--max-examples must be >= 1"),
        (cfg.max_input_len is None or cfg.max_input_len >= 1, "--max-input-len must be >= 1"),
        (cfg.max_new_tokens is None or cfg.max_new_tokens >= 1, "--max-new-tokens must be >= 1"),
        (cfg.threads is None or cfg.threads >= 1, "--threads must be >= 1"),
        (cfg.device in ("auto", "cpu", "cuda"), f"--device must be auto, cpu or cuda (got {cfg.device!r})"),
        (cfg.dtype in ("auto", "float32", "bfloat16"), f"--dtype must be auto, float32 or bfloat16 (got {cfg.dtype!r})"),
        (cfg.scoring in SCORING, f"--scoring must be one of {', '.join(SCORING)} (got {cfg.scoring!r})"),
        (cfg.chat_template in ("auto", "none"), f"--chat-template must be auto or none (got {cfg.chat_template!r})"),
        (cfg.shots >= 0, "--shots must be >= 0"),
        (cfg.cot in ("auto", "on", "off"), f"--cot must be auto, on or off (got {cfg.cot!r})"),
    ]
    for ok, msg in checks:
        if not ok:
            raise FlanbuildError(msg)


def default_scoring(kind: str, meta: dict) -> str:
    """``flan`` for encoder-decoders and for runs trained by flanbuild (their training format);
    ``lm-eval`` for other decoder-only models (comparable with published lm-eval numbers)."""
    if kind == SEQ2SEQ or meta.get("prompt_separator") is not None or meta.get("chat_template") is not None:
        return "flan"
    return "lm-eval"


@dataclass
class Setup:
    """The loaded model and the conventions chosen for it."""

    model: object
    tok: object
    kind: str
    codec: Codec
    meta: dict
    scoring: str
    dtype: object
    use_cuda: bool
    max_new: int
    cot_new: int


@dataclass
class Scored:
    per_row: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)


def _choose_device(cfg: EvalConfig):
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise FlanbuildError("--device cuda: no CUDA GPU is available")
    use_cuda = torch.cuda.is_available() and cfg.device != "cpu"
    bf16 = cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and use_cuda and torch.cuda.is_bf16_supported())
    return use_cuda, torch.bfloat16 if bf16 else torch.float32


def _setup(cfg: EvalConfig, log) -> Setup:
    where = check_model_name(cfg.model)
    if where == "preset":
        raise FlanbuildError(
            f"{cfg.model!r} is a preset, not a trained model: for an untrained baseline run "
            f"`flanbuild finetune --model {cfg.model} --max-steps 0 --out RUN` and evaluate RUN"
        )
    use_cuda, dtype = _choose_device(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    quiet_transformers()
    model, tok, kind = load_model(cfg.model, dtype=dtype, log=log)
    if use_cuda:
        model.to("cuda")
    meta = read_run_meta(cfg.model) if where == "dir" else {}
    chat = resolve_chat(cfg.chat_template, tok, kind, meta)
    codec = Codec.for_model(
        model, tok, kind,
        max_input_len=cfg.max_input_len or meta.get("max_input_len") or 512,
        max_target_len=meta.get("max_target_len") or 128,
        separator=meta.get("prompt_separator") or PROMPT_SEPARATOR,
        chat=chat,
    )
    scoring = default_scoring(kind, meta) if cfg.scoring == "auto" else cfg.scoring
    max_new = cfg.max_new_tokens or meta.get("max_target_len") or 128
    return Setup(model, tok, kind, codec, meta, scoring, dtype, use_cuda, max_new,
                 cfg.max_new_tokens or COT_MAX_NEW_TOKENS)


def _select(cfg: EvalConfig, rows: dict) -> tuple[list[int], dict[str, set[str]]]:
    """Rows to evaluate, and per task the inverted classification templates left out."""
    idx = select_rows(rows, cfg.max_examples, cfg.tasks)
    if not idx:
        raise FlanbuildError(f"the {cfg.split!r} split of {cfg.data} has no rows to evaluate")
    if cfg.all_templates:
        return idx, {}
    # inverted templates of classification tasks generate text and never count for the task
    cls_tasks = {rows["task_name"][i] for i in idx if rows["options"][i]}
    skipped: dict[str, set[str]] = {}
    for i in idx:
        if not rows["options"][i] and rows["task_name"][i] in cls_tasks:
            skipped.setdefault(rows["task_name"][i] or "(unnamed)", set()).add(
                template_key(rows["template_id"][i], rows["template_type"][i]))
    return [i for i in idx if rows["options"][i] or rows["task_name"][i] not in cls_tasks], skipped


def _exemplars(cfg: EvalConfig, rows: dict, idx: list[int]) -> tuple[dict[int, list], dict[str, str]]:
    if not cfg.shots:
        return {}, {}
    from flanbuild.finetune.data import available_splits
    from flanbuild.finetune.fewshot import build_pools, exemplars_for

    source = cfg.shots_data or cfg.data
    train = read_split(source, "train") if "train" in available_splits(source) else None
    tasks = {rows["task_name"][i] for i in idx}
    pools = build_pools(rows, train, tasks)
    return exemplars_for(idx, rows, pools, cfg.shots, cfg.seed), {t: p.source for t, p in pools.items()}


def _is_cot(cfg: EvalConfig, rows: dict, i: int) -> bool:
    if rows["options"][i] or cfg.cot == "off":
        return False
    return cfg.cot == "on" or rows["cluster"][i] == COT_CLUSTER


def _classify(cfg: EvalConfig, s: Setup, rows: dict, cls_rows: list[int], shots: dict, out: Scored, log) -> None:
    if not cls_rows:
        return
    t = time.time()
    groups = [requests(s.codec, s.scoring, rows["inputs"][i], rows["options"][i], shots.get(i, ())) for i in cls_rows]
    n_pairs = sum(len(c) for _, c in groups)
    bar = Progress("rank classification", n_pairs, "pairs", enabled=not cfg.quiet)
    if cfg.share_prefix:
        scores = score_grouped(s.model, s.codec, groups, cfg.batch_size, bar)
    else:
        flat = score_continuations(s.model, s.codec, [p for p, cs in groups for _ in cs],
                                   [c for _, cs in groups for c in cs], cfg.batch_size, bar)
        scores, k = [], 0
        for _, cs in groups:
            scores.append(flat[k : k + len(cs)])
            k += len(cs)
    bar.close()
    for i, lps in zip(cls_rows, scores):
        opts = rows["options"][i]
        out.per_row[i] = classification_scores(lps, opts, rows["targets"][i])
        out.extra[i] = {"option_logprobs": lps, "prediction": opts[max(range(len(opts)), key=lambda j: lps[j])]}
    out.timings["classification_pairs"] = n_pairs
    out.timings["classification_seconds"] = round(time.time() - t, 2)
    log(f"  rank classification ({s.scoring}): {n_pairs} (example, option) pairs in {time.time() - t:.1f}s")


def _generate(cfg: EvalConfig, s: Setup, rows: dict, gen_rows: list[int], shots: dict, out: Scored, log,
              cot: bool) -> None:
    if not gen_rows:
        return
    from flanbuild.finetune.cot import cot_scores

    t = time.time()
    max_new = s.cot_new if cot else s.max_new
    prompts = s.codec.prompts([rows["inputs"][i] for i in gen_rows], [shots.get(i, ()) for i in gen_rows])
    label = "chain-of-thought generation" if cot else "greedy generation"
    bar = Progress(label, len(gen_rows), "rows", enabled=not cfg.quiet)
    preds = greedy_generate(s.model, s.codec, prompts, max_new, cfg.batch_size, bar)
    bar.close()
    for i, pred in zip(gen_rows, preds):
        scores = generation_scores(pred, rows["references"][i])
        out.extra[i] = {"prediction": pred}
        if cot:
            c = cot_scores(pred, [rows["targets"][i]] + list(rows["references"][i]))
            scores["cot_exact_match"] = c["cot_exact_match"]
            out.extra[i].update(answer=c["answer"], reference_answer=c["reference_answer"])
        out.per_row[i] = scores
    log(f"  {label}: {len(gen_rows)} rows (<= {max_new} new tokens) in {time.time() - t:.1f}s")


def _records(rows: dict, idx: list[int], scored: Scored) -> list[dict]:
    return [
        {
            "task": rows["task_name"][i] or "(unnamed)",
            "cluster": rows["cluster"][i] or "(none)",
            "template_id": rows["template_id"][i],
            "template_type": rows["template_type"][i],
            "example_id": rows["example_id"][i],
            "kind": "classification" if rows["options"][i] else "generation",
            "scores": scored.per_row[i],
            "prediction": scored.extra[i].get("prediction", ""),
            "references": rows["references"][i],
        }
        for i in idx
    ]


def _settings(cfg: EvalConfig, s: Setup, pools: dict[str, str]) -> dict:
    return {
        "scores": "fractions in [0, 1]",
        "scoring": s.scoring,
        "classification": SCORING_NOTES[s.scoring],
        "length_normalisation": "accuracy_norm (lm-eval acc_norm) divides each option's log-likelihood by its "
                                "length in characters",
        "generation": "greedy decoding; exact_match and f1 with SQuAD normalisation, rougeL F-measure "
                      "(rouge_score, no stemming), max over references; bleu: sacrebleu corpus BLEU per template",
        "chain_of_thought": f"cot={cfg.cot}: generation rows of the {COT_CLUSTER} cluster generate a rationale "
                            f"(<= {s.cot_new} new tokens); the final answer is extracted and compared (cot_exact_match)",
        "aggregation": "template = mean over rows (corpus BLEU over rows); task = mean and best over the "
                       "non-inverted templates of the task's kind; cluster = mean over tasks",
        "chat_template": s.codec.chat,
        "shots": cfg.shots,
        "shots_seed": cfg.seed,
        "shots_pool": pools,
        "share_prefix": cfg.share_prefix,
        "all_templates": cfg.all_templates,
        "max_input_len": s.codec.max_input_len,
        "max_new_tokens": s.max_new,
        "prompt_separator": s.codec.separator if s.kind == CAUSAL and not s.codec.chat else None,
        "dtype": str(s.dtype).replace("torch.", ""),
        "device": "cuda" if s.use_cuda else "cpu",
    }


def _write(cfg: EvalConfig, results: dict, predictions, records, idx, rows, scored: Scored) -> None:
    if cfg.out:
        out = Path(cfg.out).expanduser()
        if out.is_dir():
            raise FlanbuildError(f"--out is a directory, expected a file name (e.g. {out / 'results.json'})")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    if predictions:
        p = Path(predictions).expanduser()
        p.parent.mkdir(parents=True, exist_ok=True)
        with p.open("w", encoding="utf-8") as fh:
            for r, i in zip(records, idx):
                fh.write(json.dumps({**r, "inputs": rows["inputs"][i], "targets": rows["targets"][i],
                                     "options": rows["options"][i], **scored.extra[i]}, ensure_ascii=False) + "\n")


def run_evaluate(cfg: EvalConfig, predictions: str | None = None) -> dict:
    """Evaluate; returns the results dict (also written to ``cfg.out`` when given)."""
    _validate(cfg)
    t0 = time.time()
    log = (lambda *a: None) if cfg.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    rows = read_split(cfg.data, cfg.split)
    idx, skipped = _select(cfg, rows)
    s = _setup(cfg, log)
    shots, pools = _exemplars(cfg, rows, idx)
    cls_rows = [i for i in idx if rows["options"][i]]
    cot_rows = [i for i in idx if _is_cot(cfg, rows, i)]
    gen_rows = [i for i in idx if not rows["options"][i] and not _is_cot(cfg, rows, i)]
    log(f"evaluating {cfg.model} ({s.kind}{', chat template' if s.codec.chat else ''}"
        f"{f', {cfg.shots}-shot' if cfg.shots else ''}) on {len(idx)} rows of {cfg.data} [{cfg.split}]: "
        f"{len(cls_rows)} classification, {len(gen_rows)} generation, {len(cot_rows)} chain-of-thought")
    scored = Scored()
    _classify(cfg, s, rows, cls_rows, shots, scored, log)
    _generate(cfg, s, rows, gen_rows, shots, scored, log, cot=False)
    _generate(cfg, s, rows, cot_rows, shots, scored, log, cot=True)
    records = _records(rows, idx, scored)
    info = task_info(cfg.data)
    agg = aggregate(records, {t: v["metric"] for t, v in info.items() if v.get("metric")},
                    {t: set(v.get("inverted_templates") or ()) for t, v in info.items()})
    for task, keys in skipped.items():
        if task in agg["tasks"]:
            agg["tasks"][task]["skipped_templates"] = sorted(keys)
    results = {
        "model": cfg.model,
        "kind": s.kind,
        "architecture": type(s.model).__name__,
        "peft": s.meta.get("peft"),
        "data": str(cfg.data),
        "split": cfg.split,
        "data_fingerprint": fingerprint(cfg.data),
        "num_examples": len({(r["task"], r["example_id"]) for r in records}),
        "num_rows": len(records),
        "max_examples": cfg.max_examples,
        "settings": _settings(cfg, s, pools),
        **agg,
        "timings": scored.timings,
        "seconds": round(time.time() - t0, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        "config": asdict(cfg),
    }
    _write(cfg, results, predictions, records, idx, rows, scored)
    results["table"] = format_table(results)
    return results
