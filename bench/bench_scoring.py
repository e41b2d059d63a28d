"""Rank-classification throughput: (example, option) pairs/s before and after prefix sharing.

before: every (prompt, option) pair is its own sequence (``score_continuations``, batched, sorted by
        length);
after:  one forward over each example's prompt fills the KV cache, then all its options run as one
        batch from the cache (``score_grouped``).

Default: a small random Llama (4 layers, hidden 256) on synthetic rows with ~100-token prompts and
4 options, so it runs in seconds. ``--real`` adds SmolLM2-135M (the ``smollm2-135m`` preset) on a few
rows. Both paths must give the same log-likelihoods (checked, 1e-4).

    python bench/bench_scoring.py [--examples 48] [--options 4] [--prompt-words 80] [--real] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from flanbuild.finetune.modeling import CAUSAL, Codec, train_tokenizer  # noqa: E402
from flanbuild.finetune.scoring import requests, score_continuations, score_grouped  # noqa: E402

WORDS = ("the a premise hypothesis river stone cloud tiger piano lemon candle forest rocket violin garden "
         "mirror pepper window anchor question answer colour green yellow because although however").split()
OPTIONS = ["yes", "no", "it is not possible to tell", "maybe"]


def synthetic_rows(n: int, words: int, n_options: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        text = " ".join(rng.choice(WORDS) for _ in range(words)) + "\nOPTIONS:\n- " + "\n- ".join(OPTIONS[:n_options])
        rows.append((text, OPTIONS[:n_options]))
    return rows


def tiny_llama(texts):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = train_tokenizer(texts, CAUSAL, vocab_size=2048)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048,
                      pad_token_id=0, eos_token_id=1, bos_token_id=3)
    return LlamaForCausalLM(cfg).eval(), tok


def measure(name: str, model, tok, rows, scoring: str, batch_size: int, chat: bool = False, repeats: int = 2) -> dict:
    codec = Codec.for_model(model, tok, CAUSAL, 512, 32, chat=chat)
    groups = [requests(codec, scoring, text, opts) for text, opts in rows]
    pairs = sum(len(c) for _, c in groups)
    prompts = [p for p, cs in groups for _ in cs]
    conts = [c for _, cs in groups for c in cs]
    score_grouped(model, codec, groups[:2])  # warm up both paths
    score_continuations(model, codec, prompts[:4], conts[:4], batch_size)
    t_before = t_after = c_before = c_after = float("inf")
    for _ in range(repeats):  # best of N: the machine may be shared (CPU time is steadier than wall time there)
        t, c = time.perf_counter(), time.process_time()
        before = score_continuations(model, codec, prompts, conts, batch_size)
        t_before, c_before = min(t_before, time.perf_counter() - t), min(c_before, time.process_time() - c)
        t, c = time.perf_counter(), time.process_time()
        after = [x for s in score_grouped(model, codec, groups, batch_size) for x in s]
        t_after, c_after = min(t_after, time.perf_counter() - t), min(c_after, time.process_time() - c)
    diff = max(abs(a - b) for a, b in zip(before, after))
    res = {
        "model": name, "scoring": scoring, "examples": len(rows), "pairs": pairs,
        "mean_prompt_tokens": round(sum(len(p) for p, _ in groups) / len(groups), 1),
        "mean_option_tokens": round(sum(len(c) for c in conts) / len(conts), 2),
        "before_pairs_per_s": round(pairs / t_before, 2), "after_pairs_per_s": round(pairs / t_after, 2),
        "speedup": round(t_before / t_after, 2), "max_abs_diff": diff,
        "before_pairs_per_cpu_s": round(pairs / c_before, 2), "after_pairs_per_cpu_s": round(pairs / c_after, 2),
        "cpu_speedup": round(c_before / c_after, 2),
    }
    print(f"{name:<14} {scoring:<8} {pairs:>5} pairs, prompt ~{res['mean_prompt_tokens']:.0f} tok: "
          f"before {res['before_pairs_per_s']:>8.2f} pairs/s  after {res['after_pairs_per_s']:>8.2f} pairs/s  "
          f"x{res['speedup']:.2f} wall, x{res['cpu_speedup']:.2f} CPU time  (max |diff| {diff:.1e})", flush=True)
    if diff > 1e-4:
        raise SystemExit(f"prefix-shared scores differ from separate scores by {diff}")
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=48)
    ap.add_argument("--options", type=int, default=4)
    ap.add_argument("--prompt-words", type=int, default=80)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--real", action="store_true", help="also SmolLM2-135M (smollm2-135m preset) on --real-examples rows")
    ap.add_argument("--real-examples", type=int, default=8)
    ap.add_argument("--json", metavar="FILE", help="write the measurements as JSON")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = synthetic_rows(args.examples, args.prompt_words, args.options)
    model, tok = tiny_llama([t for t, _ in rows] + OPTIONS)
    results = [measure("tiny-llama", model, tok, rows, s, args.batch_size) for s in ("flan", "lm-eval")]
    if args.real:
        from flanbuild.finetune.modeling import load_model, quiet_transformers

        quiet_transformers()
        model, tok, _ = load_model("smollm2-135m")
        real_rows = rows[: args.real_examples]
        results.append(measure("smollm2-135m", model, tok, real_rows, "lm-eval", args.batch_size))
        results.append(measure("smollm2-135m", model, tok, real_rows, "flan", args.batch_size, chat=True))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
