"""Parameter-efficient fine-tuning with ``peft`` (imported lazily; ``pip install peft``).

``finetune --peft METHOD`` wraps the base model before training:

* ``lora``: low-rank updates of the attention projections (``--lora-r``, ``--lora-alpha``,
  ``--lora-dropout``, ``--lora-targets``; default targets: peft's per-architecture default, e.g.
  ``q_proj``/``v_proj`` for Llama);
* ``prompt-tuning``: ``--num-virtual-tokens`` learned input embeddings (Lester et al.), the model frozen;
* ``prefix-tuning``: learned key/value prefixes in every layer (Li & Liang);
* ``p-tuning``: virtual tokens produced by a small prompt encoder (Liu et al.).

The run directory then holds ``adapter_config.json`` + ``adapter_model.safetensors`` (and the
tokenizer), and ``flanbuild_finetune.json`` names the base model; :func:`flanbuild.finetune.modeling.load_adapter_run` loads the
base model and applies the adapter, so ``evaluate --model RUN`` works the same for every run.
"""

from __future__ import annotations

import importlib.util

from flanbuild.errors import FlanbuildError
from flanbuild.finetune.config import PEFT_METHODS

PROMPT_LEARNING = ("prompt-tuning", "prefix-tuning", "p-tuning")


def require_peft() -> None:
    if importlib.util.find_spec("peft") is None:
        raise FlanbuildError("--peft needs the peft package: pip install peft (or pip install 'flanbuild[train]')")


def peft_config(method: str, kind: str, *, r: int = 8, alpha: int = 16, dropout: float = 0.05,
                targets=None, num_virtual_tokens: int = 20):
    """The peft config object of one method for a causal or seq2seq model."""
    if method not in PEFT_METHODS:
        raise FlanbuildError(f"--peft must be one of {', '.join(PEFT_METHODS)} (got {method!r})")
    require_peft()
    from peft import LoraConfig, PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, TaskType

    task = TaskType.SEQ_2_SEQ_LM if kind == "seq2seq" else TaskType.CAUSAL_LM
    if method == "lora":
        return LoraConfig(task_type=task, r=r, lora_alpha=alpha, lora_dropout=dropout,
                          target_modules=list(targets) if targets else None)
    cls = {"prompt-tuning": PromptTuningConfig, "prefix-tuning": PrefixTuningConfig,
           "p-tuning": PromptEncoderConfig}[method]
    return cls(task_type=task, num_virtual_tokens=num_virtual_tokens)


def wrap(model, method: str, kind: str, **options):
    """``model`` wrapped for training with ``method``; only the adapter's parameters train."""
    from peft import get_peft_model

    cfg = peft_config(method, kind, **options)
    try:
        return get_peft_model(model, cfg)
    except ValueError as exc:  # e.g. LoRA target modules that the architecture does not have
        raise FlanbuildError(f"--peft {method}: {str(exc).strip().splitlines()[0]}") from None


def trainable_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def is_prompt_learning(model) -> bool:
    """True for peft models whose virtual tokens change the input (no KV-cache prefix sharing)."""
    cfg = getattr(model, "peft_config", None)
    if not cfg:
        return False
    active = cfg.get(getattr(model, "active_adapter", "default")) or next(iter(cfg.values()))
    return bool(getattr(active, "is_prompt_learning", False))
