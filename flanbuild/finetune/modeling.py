"""Models and tokenizers: presets, loading, and the prompt/target encoding shared by training and
evaluation. Imports torch/transformers lazily (inside functions)."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from flanbuild.errors import FlanbuildError
from flanbuild.finetune.config import PRESETS, PRETRAINED_PRESETS, PROMPT_SEPARATOR, RUN_META_FILE

#: peft writes this file into an adapter run directory.
ADAPTER_CONFIG = "adapter_config.json"

SEQ2SEQ = "seq2seq"
CAUSAL = "causal"

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>", "<s>"]  # ids 0..3 in preset tokenizers


def quiet_transformers() -> None:
    """Silence library progress bars and log chatter (errors still show)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


# ---------------------------------------------------------------------------------------------
# presets


def train_tokenizer(texts, kind: str, vocab_size: int = 4096):
    """A byte-level BPE tokenizer trained on ``texts`` (no download; ~0.05 s per MB).

    Byte-level means no unknown tokens on unseen text. Special tokens: ``<pad>`` 0, ``</s>`` 1,
    ``<unk>`` 2, ``<s>`` 3. ``seq2seq`` tokenizers append ``</s>`` to every encode (T5 convention, used
    for encoder inputs only); ``causal`` ones add nothing: the trainer appends EOS to targets itself.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(texts, trainer)
    if kind == SEQ2SEQ:
        tk.post_processor = processors.TemplateProcessing(
            single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        bos_token="<s>",
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
    )


def preset_kind(name: str) -> str:
    return SEQ2SEQ if name == "tiny-t5" else CAUSAL


def build_preset(name: str, texts, *, vocab_size: int = 4096, seed: int = 0):
    """(model, tokenizer) of a built-in preset, randomly initialised (seeded)."""
    import torch
    from transformers import (
        GenerationConfig,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        T5Config,
        T5ForConditionalGeneration,
    )

    if name not in PRESETS:
        raise FlanbuildError(f"unknown preset {name!r} (presets: {', '.join(PRESETS)})")
    kind = preset_kind(name)
    tok = train_tokenizer(texts, kind, vocab_size=vocab_size)
    v = len(tok)
    ids = dict(pad_token_id=0, eos_token_id=1, bos_token_id=3)
    torch.manual_seed(seed)
    if name == "tiny-t5":
        cfg = T5Config(
            vocab_size=v, d_model=128, d_kv=32, d_ff=512, num_layers=2, num_decoder_layers=2, num_heads=4,
            relative_attention_num_buckets=32, relative_attention_max_distance=128, dropout_rate=0.0,
            feed_forward_proj="relu", decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
        )
        model = T5ForConditionalGeneration(cfg)
    elif name == "tiny-llama":
        cfg = LlamaConfig(
            vocab_size=v, hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, max_position_embeddings=2048, tie_word_embeddings=True, **ids,
        )
        model = LlamaForCausalLM(cfg)
    else:  # tiny-gpt2
        cfg = GPT2Config(
            vocab_size=v, n_embd=128, n_layer=2, n_head=4, n_positions=2048, resid_pdrop=0.0, embd_pdrop=0.0,
            attn_pdrop=0.0, **ids,
        )
        model = GPT2LMHeadModel(cfg)
    model.generation_config = GenerationConfig.from_model_config(model.config)
    return model, tok


# ---------------------------------------------------------------------------------------------
# loading


def read_run_meta(path: str | Path) -> dict:
    f = Path(path) / RUN_META_FILE
    if f.is_file():
        try:
            return json.loads(f.read_text(encoding="utf-8"))
        except ValueError:
            return {}
    return {}


def check_model_name(name: str) -> str:
    """'preset' | 'pretrained' | 'dir' | 'hub', or FlanbuildError for an unknown preset / a bad directory."""
    if name in PRESETS:
        return "preset"
    if name in PRETRAINED_PRESETS:
        return "pretrained"
    p = Path(name).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file() and not (p / ADAPTER_CONFIG).is_file():
            raise FlanbuildError(f"model directory {p} has no config.json (not a saved model)")
        return "dir"
    if (name.startswith("tiny-") or name.startswith("smollm")) and "/" not in name:
        raise FlanbuildError(f"unknown preset {name!r} (presets: {', '.join(PRESETS + PRETRAINED_PRESETS)})")
    if name.startswith((".", "/", "~")) or not _HUB_ID.match(name):
        raise FlanbuildError(f"model directory not found: {name}")
    return "hub"


def resolve_model_path(name: str, log=None) -> str:
    """A loadable path or hub id: pretrained presets are converted/cached on first use."""
    where = check_model_name(name)
    if where == "preset":
        raise FlanbuildError(f"{name!r} is a preset, not a saved model (train it with `flanbuild finetune`)")
    if where == "pretrained":
        from flanbuild.finetune.pretrained import ensure_pretrained

        return str(ensure_pretrained(name, log))
    if where == "hub":
        from flanbuild.sources import offline

        offline.require_local(name, "model")  # offline and not cached: one line now, not 36 s of retries
    return str(Path(name).expanduser()) if where == "dir" else name


def is_adapter_dir(name: str) -> bool:
    return Path(name).expanduser().is_dir() and (Path(name).expanduser() / ADAPTER_CONFIG).is_file()


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_adapter_run(run: str, *, dtype=None, log=None):
    """(model, tokenizer, kind) of a run directory holding a peft adapter."""
    from flanbuild.finetune.adapters import require_peft

    require_peft()
    from peft import PeftConfig, PeftModel
    from transformers import AutoTokenizer

    path = Path(run).expanduser()
    meta_file = path / RUN_META_FILE
    meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {}
    base = meta.get("base_model") or PeftConfig.from_pretrained(str(path)).base_model_name_or_path
    if not base:
        raise FlanbuildError(f"{path}: adapter run without a base model name")
    model, tok, kind = load_model(base, dtype=dtype, log=log)
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError):
        pass  # the base model's tokenizer
    model = PeftModel.from_pretrained(model, str(path), is_trainable=False)
    fix_special_tokens(model, tok)
    return model, tok, kind


def load_model(name: str, *, dtype=None, log=None):
    """(model, tokenizer, kind) from a pretrained preset, a local directory (a run with a peft
    adapter included: its base model is loaded and the adapter applied) or a hub id."""
    if is_adapter_dir(name):
        return load_adapter_run(name, dtype=dtype, log=log)
    path = resolve_model_path(name, log)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise FlanbuildError(
            f"cannot load model {name!r}: not a preset ({', '.join(PRESETS + PRETRAINED_PRESETS)}), not a local "
            f"model directory, and not loadable from the hub/cache ({_first_line(exc)})"
        ) from None
    kind = SEQ2SEQ if getattr(config, "is_encoder_decoder", False) else CAUSAL
    auto = AutoModelForSeq2SeqLM if kind == SEQ2SEQ else AutoModelForCausalLM
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError) as exc:
        raise FlanbuildError(f"cannot load the tokenizer of {name!r} ({_first_line(exc)})") from None
    try:
        kwargs = {"dtype": dtype} if dtype is not None else {}
        model = auto.from_pretrained(path, **kwargs)
    except ValueError as exc:
        raise FlanbuildError(
            f"model {name!r} ({config.model_type}) is neither an encoder-decoder nor a causal LM ({_first_line(exc)})"
        ) from None
    except OSError as exc:
        raise FlanbuildError(f"cannot load the weights of {name!r} ({_first_line(exc)})") from None
    fix_special_tokens(model, tok)
    return model, tok, kind


def fix_special_tokens(model, tok) -> None:
    """Make sure pad/eos exist (GPT-2 style tokenizers have no pad token: use EOS)."""
    if tok.eos_token_id is None:
        raise FlanbuildError("the tokenizer has no EOS token; cannot mark the end of a target")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tok.pad_token_id
    gc = getattr(model, "generation_config", None)
    if gc is not None and gc.pad_token_id is None:
        gc.pad_token_id = tok.pad_token_id


# ---------------------------------------------------------------------------------------------
# encoding shared by training and evaluation


@dataclass
class Codec:
    """How a row becomes token ids for one model kind.

    * seq2seq: encoder ids = ``tokenizer(inputs)`` with the tokenizer's own special tokens (T5:
      trailing ``</s>``), truncated to ``max_input_len``; labels = ``tokenizer(targets)`` without
      special tokens + EOS, truncated to ``max_target_len`` (EOS kept).
    * causal: ids = leading special tokens the tokenizer adds (e.g. Llama's BOS, never a trailing
      one) + ``tokenizer(inputs + separator)``, then the target ids + EOS; the loss covers the target
      ids and the EOS only. A prompt longer than ``max_input_len`` loses tokens at its start (after the
      leading specials), so the end of the instruction and the separator are always kept.
    * causal with ``chat=True``: the prompt is the tokenizer's chat template applied to one user
      turn (few-shot exemplars: earlier user/assistant turns) with the generation prompt; the target
      is the answer + EOS (for chat models the end-of-turn token, e.g. ``<|im_end|>``).

    ``shots``: ``(inputs, targets)`` exemplars shown before the row (plain text: joined by blank lines).
    """

    tokenizer: object
    kind: str
    max_input_len: int = 512
    max_target_len: int = 128
    separator: str = PROMPT_SEPARATOR
    leading: list[int] = field(default_factory=list)
    chat: bool = False

    @classmethod
    def for_model(cls, model, tokenizer, kind, max_input_len=512, max_target_len=128, separator=PROMPT_SEPARATOR,
                  chat=False):
        if max_input_len < 1 or max_target_len < 1:
            raise FlanbuildError("--max-input-len and --max-target-len must be >= 1")
        if chat and not has_chat_template(tokenizer):
            raise FlanbuildError("the tokenizer has no chat template (use --chat-template none)")
        c = cls(tokenizer, kind, max_input_len, max_target_len, separator, chat=bool(chat) and kind == CAUSAL)
        if kind == CAUSAL:
            c.leading = [] if c.chat else leading_special_ids(tokenizer)
            limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
            if limit and c.max_input_len + c.max_target_len > limit:
                c.max_input_len = max(1, limit - c.max_target_len)
        return c

    def prompt_text(self, text: str, shots=()) -> str:
        """The prompt as a string (causal models; the separator or the chat template applied)."""
        if self.chat:
            msgs = []
            for q, a in shots:
                msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            msgs.append({"role": "user", "content": text})
            return self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        if self.kind == SEQ2SEQ:
            return "".join(f"{q}\n{a}\n\n" for q, a in shots) + text
        return "".join(f"{q}{self.separator}{a}\n\n" for q, a in shots) + text + self.separator

    def clip(self, ids: list[int]) -> list[int]:
        """Causal prompt ids (without the leading specials) cut to ``max_input_len`` from the left."""
        room = max(1, self.max_input_len - len(self.leading))
        return self.leading + ids[-room:]

    def prompt(self, text: str, shots=()) -> list[int]:
        return self.prompts([text], [shots] if shots else None)[0]

    def target(self, text: str) -> list[int]:
        return self.targets([text])[0]

    def prompts(self, texts: list[str], shots=None) -> list[list[int]]:
        tok = self.tokenizer
        shots = shots or [()] * len(texts)
        if self.kind == SEQ2SEQ:
            strs = [self.prompt_text(t, s) for t, s in zip(texts, shots)]
            return tok(strs, add_special_tokens=True, truncation=True, max_length=self.max_input_len)["input_ids"]
        enc = tok([self.prompt_text(t, s) for t, s in zip(texts, shots)], add_special_tokens=False)["input_ids"]
        return [self.clip(ids) for ids in enc]

    def targets(self, texts: list[str]) -> list[list[int]]:
        enc = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        eos = self.tokenizer.eos_token_id
        return [ids[: self.max_target_len - 1] + [eos] for ids in enc]

    def example(self, inputs: str, targets: str) -> dict:
        """One training example: input_ids and labels (-100 where no loss)."""
        p, t = self.prompt(inputs), self.target(targets)
        if self.kind == SEQ2SEQ:
            return {"input_ids": p, "labels": t}
        return {"input_ids": p + t, "labels": [-100] * len(p) + t}


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def resolve_chat(mode: str, tokenizer, kind: str, meta: dict | None = None) -> bool:
    """Whether to use the chat template: ``none`` never; ``auto`` follows a flanbuild run's training
    choice, else uses the template when a decoder-only model's tokenizer has one."""
    if mode not in ("auto", "none"):
        raise FlanbuildError(f"--chat-template must be auto or none (got {mode!r})")
    if mode == "none" or kind != CAUSAL:
        return False
    if meta and "chat_template" in meta:
        return bool(meta["chat_template"])
    return has_chat_template(tokenizer)


def leading_special_ids(tokenizer) -> list[int]:
    """The special ids the tokenizer puts *before* a text (e.g. BOS), found by probing."""
    probe = "flanbuild probe"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start])
    return []
