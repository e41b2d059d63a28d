"""``flanbuild finetune``: train a model on a mixture with the transformers Trainer.

Imported only when training is requested: this module imports torch and transformers.
"""

from __future__ import annotations

import json
import random
import resource
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from flanbuild.errors import FlanbuildError
from flanbuild.finetune.config import PEFT_METHODS, PRESETS, RUN_META_FILE, FinetuneConfig
from flanbuild.finetune.data import fingerprint, read_split
from flanbuild.finetune.modeling import (
    CAUSAL,
    SEQ2SEQ,
    Codec,
    build_preset,
    check_model_name,
    load_model,
    preset_kind,
    quiet_transformers,
    resolve_chat,
)

#: Presets train their tokenizer on at most this many rows of the training split.
TOKENIZER_ROWS = 50_000
#: Size of the fixed sample of training rows whose mean loss is measured before and after training.
LOSS_SAMPLE_ROWS = 64


# ---------------------------------------------------------------------------------------------
# datasets and collators


class EncodedDataset(torch.utils.data.Dataset):
    """Rows tokenized on access (no up-front pass over a large mixture)."""

    def __init__(self, inputs: list[str], targets: list[str], codec: Codec):
        self.inputs, self.targets, self.codec = inputs, targets, codec

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int) -> dict:
        return self.codec.example(self.inputs[i], self.targets[i])


class PackedDataset(torch.utils.data.Dataset):
    """Decoder-only packing: whole examples laid end to end in rows of at most ``block`` tokens.

    Examples are shuffled (seeded) and placed greedily (next fit); an example never spans two rows.
    Each row carries ``position_ids`` that restart at 0 for every example and *no* attention mask:
    transformers then builds a block-diagonal causal mask from the position ids
    (``masking_utils.find_packed_sequence_indices``), so attention never crosses examples, and no
    loss is put on the first token of an example (it is a prompt token, label -100).
    """

    def __init__(self, inputs: list[str], targets: list[str], codec: Codec, seed: int, chunk: int = 2048):
        block = codec.max_input_len + codec.max_target_len
        examples = []
        for s in range(0, len(inputs), chunk):
            ps = codec.prompts(inputs[s : s + chunk])
            ts = codec.targets(targets[s : s + chunk])
            examples.extend((p + t, [-100] * len(p) + t) for p, t in zip(ps, ts))
        random.Random(seed).shuffle(examples)
        rows, cur_ids, cur_lab, cur_pos = [], [], [], []
        for ids, lab in examples:
            if cur_ids and len(cur_ids) + len(ids) > block:
                rows.append({"input_ids": cur_ids, "labels": cur_lab, "position_ids": cur_pos})
                cur_ids, cur_lab, cur_pos = [], [], []
            cur_ids = cur_ids + ids
            cur_lab = cur_lab + lab
            cur_pos = cur_pos + list(range(len(ids)))
        if cur_ids:
            rows.append({"input_ids": cur_ids, "labels": cur_lab, "position_ids": cur_pos})
        self.rows = rows
        self.num_examples = len(examples)
        self.num_tokens = sum(len(r["input_ids"]) for r in rows)
        self.block = block

    def __len__(self) -> int:
        return len(self.rows)

    def check_isolation(self, model) -> float | None:
        """Check on one packed row that an example's logits equal its logits alone.

        Returns the largest difference (None when no row holds two examples); models whose attention
        does not honour packed position ids fail this check and must not be trained with packing.
        """
        row = next((r for r in self.rows if r["position_ids"].count(0) >= 2), None)
        if row is None:
            return None
        starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [len(row["input_ids"])]
        a, b = starts[1], starts[2]
        device = next(model.parameters()).device
        ids = torch.tensor([row["input_ids"]], device=device)
        pos = torch.tensor([row["position_ids"]], device=device)
        was_training = model.training
        model.eval()
        with torch.inference_mode():
            packed = model(input_ids=ids, position_ids=pos, use_cache=False).logits[0, a:b].float()
            alone = model(input_ids=ids[:, a:b], use_cache=False).logits[0].float()
        if was_training:
            model.train()
        return float((packed - alone).abs().max())

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


class PadCollator:
    """Right padding: input ids with the pad id, labels with -100, attention mask 1/0.

    With ``packed=True`` rows carry position ids (padding gets its own 0.. run, i.e. its own
    segment) and no attention mask is returned (see :class:`PackedDataset`).
    """

    def __init__(self, pad_id: int, packed: bool = False):
        self.pad_id, self.packed = pad_id, packed

    def __call__(self, features: list[dict]) -> dict:
        n = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), n), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(features), n), dtype=torch.long)
        for i, f in enumerate(features):
            ids[i, : len(f["input_ids"])] = torch.tensor(f["input_ids"])
            mask[i, : len(f["input_ids"])] = 1
        m = max(len(f["labels"]) for f in features)
        labels = torch.full((len(features), m), -100, dtype=torch.long)
        for i, f in enumerate(features):
            labels[i, : len(f["labels"])] = torch.tensor(f["labels"])
        if not self.packed:
            return {"input_ids": ids, "attention_mask": mask, "labels": labels}
        pos = torch.zeros((len(features), n), dtype=torch.long)
        for i, f in enumerate(features):
            k = len(f["position_ids"])
            pos[i, :k] = torch.tensor(f["position_ids"])
            pos[i, k:] = torch.arange(n - k)
        return {"input_ids": ids, "labels": labels, "position_ids": pos}


# ---------------------------------------------------------------------------------------------
# helpers


def mean_loss(model, codec: Codec, inputs: list[str], targets: list[str], batch_size: int = 16) -> float:
    """Mean per-target-token cross-entropy of the model on these rows (no dropout, no grad)."""
    collate = PadCollator(codec.tokenizer.pad_token_id)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    device = next(model.parameters()).device
    with torch.inference_mode():
        for s in range(0, len(inputs), batch_size):
            batch = collate([codec.example(i, t) for i, t in zip(inputs[s : s + batch_size], targets[s : s + batch_size])])
            batch = {k: v.to(device) for k, v in batch.items()}
            labels = batch.pop("labels")
            if codec.kind == SEQ2SEQ:
                logits = model(**batch, labels=labels).logits
                gold = labels
            else:
                # prompt-learning adapters prepend virtual tokens: keep the positions of the real ones
                logits = model(**batch).logits[:, -labels.shape[1]:][:, :-1]
                gold = labels[:, 1:]
            keep = gold != -100
            lp = torch.log_softmax(logits[keep].float(), dim=-1)
            total += -lp.gather(-1, gold[keep].unsqueeze(-1)).sum().item()
            count += int(keep.sum())
    if was_training:
        model.train()
    return total / max(1, count)


def _tokenizer_texts(inputs: list[str], targets: list[str]):
    step = max(1, len(inputs) // TOKENIZER_ROWS)
    for i in range(0, len(inputs), step):
        yield inputs[i]
        yield targets[i]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _validate(cfg: FinetuneConfig) -> None:
    checks = [
        (cfg.batch_size >= 1, "--batch-size must be >= 1"),
        (cfg.grad_accum >= 1, "--grad-accum must be >= 1"),
        (cfg.max_steps is None or cfg.max_steps >= 0, "--max-steps must be >= 0"),
        (cfg.epochs > 0, "--epochs must be > 0"),
        (cfg.lr is None or cfg.lr > 0, "--lr must be > 0"),
        (cfg.max_input_len >= 1 and cfg.max_target_len >= 2, "--max-input-len must be >= 1 and --max-target-len >= 2"),
        (cfg.save_steps >= 0, "--save-steps must be >= 0 (0: no intermediate checkpoints)"),
        (cfg.logging_steps >= 1, "--logging-steps must be >= 1"),
        (cfg.threads is None or cfg.threads >= 1, "--threads must be >= 1"),
        (cfg.vocab_size >= 300, "--vocab-size must be >= 300 (the 256 byte symbols plus merges)"),
        (cfg.device in ("auto", "cpu", "cuda"), f"--device must be auto, cpu or cuda (got {cfg.device!r})"),
        (not (cfg.resume and cfg.overwrite), "--resume and --overwrite exclude each other"),
        (cfg.peft is None or cfg.peft in PEFT_METHODS, f"--peft must be one of {', '.join(PEFT_METHODS)} (got {cfg.peft!r})"),
        (cfg.lora_r >= 1 and cfg.lora_alpha >= 1, "--lora-r and --lora-alpha must be >= 1"),
        (0 <= cfg.lora_dropout < 1, "--lora-dropout must be in [0, 1)"),
        (cfg.num_virtual_tokens >= 1, "--num-virtual-tokens must be >= 1"),
        (cfg.chat_template in ("auto", "none"), f"--chat-template must be auto or none (got {cfg.chat_template!r})"),
        (cfg.max_rows is None or cfg.max_rows >= 1, "--max-rows must be >= 1"),
    ]
    for ok, msg in checks:
        if not ok:
            raise FlanbuildError(msg)


def _last_checkpoint(out: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(out)) if out.is_dir() else None


def _training_args(args_cls, cfg: FinetuneConfig, out: Path, lr: float, bf16: bool, use_cuda: bool):
    return args_cls(
        output_dir=str(out),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps if cfg.max_steps else -1,
        learning_rate=lr,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        save_strategy="steps" if cfg.save_steps > 0 else "no",
        save_steps=cfg.save_steps if cfg.save_steps > 0 else 500,
        save_total_limit=cfg.save_total_limit,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=bf16,
        use_cpu=not use_cuda,
        report_to="none",
        disable_tqdm=not cfg.progress,
        dataloader_num_workers=0,
        dataloader_pin_memory=use_cuda,
        remove_unused_columns=False,
    )


class _ProgressPrinter:
    """Trainer callback: a progress line with ETA (steps) and the loss at every logging step."""

    def __new__(cls, stream, quiet: bool = False):
        from transformers import TrainerCallback

        from flanbuild.finetune.progress import Progress

        class ProgressPrinter(TrainerCallback):
            bar: Progress | None = None
            loss: str = ""

            def on_train_begin(self, args, state, control, **kwargs):
                # a resumed run starts where it stopped
                self.bar = Progress("train", state.max_steps, "steps", stream=stream, enabled=not quiet,
                                    initial=state.global_step)

            def on_step_end(self, args, state, control, **kwargs):
                self.bar.set(state.global_step, self.loss)

            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "loss" in logs:
                    lr = logs.get("learning_rate")
                    lr_s = f"  lr {lr:.2e}" if isinstance(lr, (int, float)) else ""
                    self.loss = f"loss {logs['loss']:.4f}{lr_s}"
                    self.bar.set(state.global_step, self.loss, force=True)

        return ProgressPrinter()


# ---------------------------------------------------------------------------------------------
# the steps of a run


def _read_rows(cfg: FinetuneConfig) -> tuple[list[str], list[str]]:
    rows = read_split(cfg.data, cfg.split, columns=("inputs", "targets"))
    inputs, targets = rows["inputs"], rows["targets"]
    if cfg.max_rows:
        inputs, targets = inputs[: cfg.max_rows], targets[: cfg.max_rows]
    if not inputs:
        raise FlanbuildError(f"the {cfg.split!r} split of {cfg.data} has no rows")
    return inputs, targets


def _prepare_out(cfg: FinetuneConfig) -> tuple[Path, str | None, list[Path]]:
    """(run dir, checkpoint to resume from, stale checkpoints that --overwrite removes later)."""
    out = Path(cfg.out).expanduser()
    if out.exists() and not out.is_dir():
        raise FlanbuildError(f"--out exists and is not a directory: {out}")
    if cfg.resume:
        ckpt = _last_checkpoint(out)
        if ckpt is None:
            raise FlanbuildError(f"--resume: no checkpoint-* directory in {out}")
        return out, ckpt, []
    held = out.is_dir() and (_last_checkpoint(out) or (out / "config.json").exists() or (out / "adapter_config.json").exists())
    if held and not cfg.overwrite:
        raise FlanbuildError(f"{out} already holds a run: pass --resume to continue it or --overwrite to start over")
    stale = [ck for ck in out.glob("checkpoint-*") if ck.is_dir()] if held else []
    return out, None, stale


def _devices(cfg: FinetuneConfig) -> tuple[bool, bool]:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise FlanbuildError("--device cuda: no CUDA GPU is available")
    use_cuda = torch.cuda.is_available() and cfg.device != "cpu"
    return use_cuda, bool(use_cuda and torch.cuda.is_bf16_supported())


def _load(cfg: FinetuneConfig, resume_ckpt, inputs, targets, log):
    """(model, tokenizer, kind, preset name or None) before any adapter is added."""
    preset = cfg.model if check_model_name(cfg.model) == "preset" else None
    if resume_ckpt and not cfg.peft:  # the checkpoint holds config, weights and tokenizer (presets included)
        model, tok, kind = load_model(resume_ckpt)
    elif preset:
        model, tok = build_preset(preset, _tokenizer_texts(inputs, targets), vocab_size=cfg.vocab_size, seed=cfg.seed)
        kind = preset_kind(preset)
    else:
        model, tok, kind = load_model(cfg.model, log=log)
    if kind == SEQ2SEQ and cfg.packing:
        raise FlanbuildError("--packing is for decoder-only models; this model is an encoder-decoder")
    return model, tok, kind, preset


def _add_adapter(cfg: FinetuneConfig, model, kind: str, out: Path, tok, preset):
    """Wrap the model for --peft; a random preset's base model is saved into RUN/base_model first."""
    if not cfg.peft:
        return model, cfg.model
    from flanbuild.finetune import adapters

    if cfg.packing and cfg.peft in adapters.PROMPT_LEARNING:
        raise FlanbuildError(f"--packing cannot be combined with --peft {cfg.peft} (virtual tokens per example)")
    base_name = cfg.model
    if preset:  # no other copy of a random preset exists: keep it with the run
        base_dir = out / "base_model"
        model.save_pretrained(str(base_dir))
        tok.save_pretrained(str(base_dir))
        base_name = str(base_dir.resolve())
    elif check_model_name(cfg.model) == "dir":
        base_name = str(Path(cfg.model).expanduser().resolve())
    wrapped = adapters.wrap(model, cfg.peft, kind, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                            targets=cfg.lora_targets, num_virtual_tokens=cfg.num_virtual_tokens)
    return wrapped, base_name


def _dataset(cfg: FinetuneConfig, inputs, targets, codec, model, log):
    if not cfg.packing:
        return EncodedDataset(inputs, targets, codec)
    dataset = PackedDataset(inputs, targets, codec, cfg.seed)
    diff = dataset.check_isolation(model)
    if diff is not None and diff > 1e-3:
        raise FlanbuildError(
            f"--packing: {type(model).__name__} lets attention cross packed examples (logits differ by {diff:.3g}); "
            "train it without --packing"
        )
    log(f"packing: {dataset.num_examples} examples -> {len(dataset)} rows of <= {dataset.block} tokens "
        f"({dataset.num_tokens / max(1, len(dataset) * dataset.block):.0%} full)")
    return dataset


def _trainer(cfg: FinetuneConfig, kind, model, tok, dataset, out, lr, bf16, use_cuda):
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    args_cls = Seq2SeqTrainingArguments if kind == SEQ2SEQ else TrainingArguments
    trainer_cls = Seq2SeqTrainer if kind == SEQ2SEQ else Trainer
    try:
        args = _training_args(args_cls, cfg, out, lr, bf16, use_cuda)
    except ValueError as exc:  # e.g. an unknown --lr-scheduler name
        raise FlanbuildError(f"bad training argument: {str(exc).strip().splitlines()[0]}") from None
    trainer = trainer_cls(
        model=model, args=args, train_dataset=dataset,
        data_collator=PadCollator(tok.pad_token_id, packed=cfg.packing), processing_class=tok,
    )
    if not cfg.progress:
        trainer.remove_callback(PrinterCallback)
        trainer.add_callback(_ProgressPrinter(sys.stderr, quiet=cfg.quiet))
    return trainer


def _loss_sample(inputs, targets):
    sample = list(range(0, len(inputs), max(1, len(inputs) // LOSS_SAMPLE_ROWS)))[:LOSS_SAMPLE_ROWS]
    return [inputs[i] for i in sample], [targets[i] for i in sample]


def _train(cfg: FinetuneConfig, trainer, resume_ckpt, out: Path, log) -> tuple[dict, float]:
    t = time.time()
    metrics: dict = {}
    if cfg.max_steps == 0:
        log("--max-steps 0: saving the model without training")
    else:
        metrics = dict(trainer.train(resume_from_checkpoint=resume_ckpt).metrics)
    seconds = time.time() - t
    trainer.model.config.use_cache = True  # the Trainer turns the KV cache off for training; generation wants it
    trainer.save_model(str(out))
    trainer.save_state()
    return metrics, seconds


# ---------------------------------------------------------------------------------------------
# main entry


def run_finetune(cfg: FinetuneConfig) -> dict:
    """Train; returns the summary also written to RUN/flanbuild_finetune.json."""
    _validate(cfg)
    t0 = time.time()
    log = (lambda *a: None) if cfg.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    inputs, targets = _read_rows(cfg)
    out, resume_ckpt, stale = _prepare_out(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    quiet_transformers()
    use_cuda, bf16 = _devices(cfg)
    t_model = time.time()
    model, tok, kind, preset = _load(cfg, resume_ckpt, inputs, targets, log)
    chat = resolve_chat(cfg.chat_template, tok, kind)
    codec = Codec.for_model(model, tok, kind, cfg.max_input_len, cfg.max_target_len, chat=chat)
    n_params = sum(p.numel() for p in model.parameters())
    for ck in stale:
        shutil.rmtree(ck)
    model, base_name = _add_adapter(cfg, model, kind, out, tok, preset)
    lr = cfg.lr if cfg.lr is not None else _default_lr(cfg, preset)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(f"model: {cfg.model} ({kind}, {n_params / 1e6:.2f}M parameters, {n_train / 1e6:.3f}M trainable"
        f"{', peft ' + cfg.peft if cfg.peft else ''}{', chat template' if chat else ''}, vocab {len(tok)}) "
        f"built/loaded in {time.time() - t_model:.1f}s; {len(inputs)} {cfg.split} rows from {cfg.data}")
    dataset = _dataset(cfg, inputs, targets, codec, model, log)
    s_in, s_tg = _loss_sample(inputs, targets)
    if use_cuda:
        model.to("cuda")
    loss_before = mean_loss(model, codec, s_in, s_tg, cfg.batch_size)
    trainer = _trainer(cfg, kind, model, tok, dataset, out, lr, bf16, use_cuda)
    train_metrics, train_s = _train(cfg, trainer, resume_ckpt, out, log)
    model = trainer.model
    loss_after = mean_loss(model, codec, s_in, s_tg, cfg.batch_size)
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    summary = {
        "model": cfg.model,
        "base_model": base_name,
        "preset": preset,
        "kind": kind,
        "architecture": type(model).__name__,
        "parameters": n_params,
        "trainable_parameters": n_train,
        "peft": cfg.peft,
        "chat_template": chat,
        "prompt_separator": codec.separator if kind == CAUSAL else None,
        "max_input_len": codec.max_input_len,
        "max_target_len": codec.max_target_len,
        "packing": cfg.packing,
        "data": str(cfg.data),
        "split": cfg.split,
        "data_fingerprint": fingerprint(cfg.data),
        "train_rows": len(inputs),
        "global_step": trainer.state.global_step,
        "learning_rate": lr,
        "bf16": bf16,
        "device": "cuda" if use_cuda else "cpu",
        "loss_sample_rows": len(s_in),
        "loss_before": loss_before,
        "loss_after": loss_after,
        "first_logged_loss": logged[0] if logged else None,
        "last_logged_loss": logged[-1] if logged else None,
        "train_seconds": round(train_s, 2),
        "total_seconds": round(time.time() - t0, 2),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "trainer_metrics": train_metrics,
        "config": asdict(cfg),
    }
    if use_cuda:
        summary["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    (out / RUN_META_FILE).write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    log(f"done: {trainer.state.global_step} steps in {train_s:.1f}s; loss on {len(s_in)} fixed train rows "
        f"{loss_before:.3f} -> {loss_after:.3f}; model saved to {out}")
    return summary


def _default_lr(cfg: FinetuneConfig, preset) -> float:
    """1e-3 for random presets; pretrained: 5e-5 full, 1e-4 LoRA, 3e-2 prompt-learning methods."""
    if preset:
        return 1e-3
    return {None: 5e-5, "lora": 1e-4}.get(cfg.peft, 3e-2)


__all__ = ["run_finetune", "mean_loss", "PackedDataset", "PadCollator", "EncodedDataset", "PRESETS"]
