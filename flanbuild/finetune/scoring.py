"""Rank classification and greedy generation, batched (imports torch).

Two scoring conventions build the (prompt, option) token sequences (:func:`requests`):

* ``flan`` (FLAN/T5, flanbuild's training format): prompt = inputs + separator (or the chat
  template), continuation = option tokens + EOS. The EOS term says "the answer ends here".
* ``lm-eval`` (lm-evaluation-harness ``multiple_choice``): context = inputs, continuation =
  ``" " + option`` (no delimiter through a chat template), no EOS; trailing white space of the
  context moves to the continuation and the continuation ids are ``encode(context + continuation)``
  minus the first ``len(encode(context))`` ids, exactly as lm-eval's ``_encode_pair``.

Two ways to score them: :func:`score_continuations` (every pair its own sequence; the reference
path) and :func:`score_grouped` (one forward over the shared prompt with the KV cache, then all
options of the example in one batch from the cached keys/values; same numbers, less work).

Rank classification scores each (example, option) pair by the summed log-likelihood of the option's
tokens *and the EOS* given the prompt (the same target encoding as training, so "yes" is not
confused with a prefix of "yes, definitely"). Pairs are sorted by length and batched:

* causal LMs: ``prompt + option`` right-padded with an attention mask. Real tokens sit at
  positions 0..n-1 whatever the padding, so no position ids are needed and the batched scores equal
  one-at-a-time scores (up to float rounding; tests check 1e-4).
* encoder-decoders: the prompt right-padded with an attention mask on the encoder, the option as
  ``labels`` padded with -100 (the decoder is causal, so trailing padding cannot leak backwards).

Greedy generation left-pads prompts for causal LMs (generation continues from the last column) and
right-pads encoder inputs for encoder-decoders.
"""

from __future__ import annotations

import torch

from flanbuild.finetune.modeling import SEQ2SEQ, Codec


def _device(model):
    return next(model.parameters()).device


def _accepts_logits_to_keep(model) -> bool:
    import inspect

    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _pad(seqs: list[list[int]], value: int, left: bool = False):
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), value, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        if not s:
            continue
        if left:
            ids[i, n - len(s) :] = torch.tensor(s)
            mask[i, n - len(s) :] = 1
        else:
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
    return ids, mask


# ---------------------------------------------------------------------------------------------
# requests: the token ids of (prompt, options) under a convention


def lm_eval_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-evaluation-harness ``_encode_pair``: (context ids, continuation ids), no special tokens."""
    n = len(context) - len(context.rstrip())
    if n:
        continuation = context[-n:] + continuation
        context = context[:-n]
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    return ctx, whole[len(ctx):]


def lm_eval_context(codec: Codec, text: str, shots=()) -> str:
    """lm-eval's context: exemplars as ``question + " " + answer`` joined by blank lines, then the
    question (through the chat template when the codec uses one)."""
    if codec.chat:
        return codec.prompt_text(text, shots)
    return "".join(f"{q} {a}\n\n" for q, a in shots) + text


def requests(codec: Codec, scoring: str, text: str, options: list[str], shots=()) -> tuple[list[int], list[list[int]]]:
    """(prompt ids, one continuation per option) of one row under ``scoring`` (flan | lm-eval)."""
    if scoring == "flan":
        return codec.prompt(text, shots), codec.targets(options)
    context = lm_eval_context(codec, text, shots)
    if codec.kind == SEQ2SEQ:  # encoder sees the context, decoder the bare option (no EOS)
        return codec.prompts([context])[0], [codec.tokenizer(o, add_special_tokens=False)["input_ids"] for o in options]
    delimiter = "" if codec.chat else " "
    pairs = [lm_eval_pair(codec.tokenizer, context, delimiter + o) for o in options]
    return codec.clip(pairs[0][0]), [c for _, c in pairs]


# ---------------------------------------------------------------------------------------------
# scoring


def _real_logits(logits, length: int):
    """Drop the positions of virtual tokens that prompt-learning adapters put before the input."""
    return logits[:, -length:] if logits.dim() == 3 and logits.shape[1] > length else logits


@torch.inference_mode()
def score_continuations(model, codec: Codec, prompts: list[list[int]], conts: list[list[int]], batch_size: int = 16,
                        progress=None) -> list[float]:
    """Summed log-probability of ``conts[i]`` after ``prompts[i]`` for every pair, each pair its own
    sequence (the reference path; :func:`score_grouped` shares the prompt)."""
    model.eval()
    dev = _device(model)
    pad = codec.tokenizer.pad_token_id
    n = len(prompts)
    order = sorted(range(n), key=lambda i: -(len(prompts[i]) + len(conts[i])))
    scores = [0.0] * n
    for s in range(0, n, batch_size):
        chunk = order[s : s + batch_size]
        if codec.kind == SEQ2SEQ:
            ids, mask = _pad([prompts[i] for i in chunk], pad)
            labels, _ = _pad([conts[i] for i in chunk], -100)
            ids, mask, labels = ids.to(dev), mask.to(dev), labels.to(dev)
            logits = model(input_ids=ids, attention_mask=mask, labels=labels).logits
            gold = labels
        else:
            seqs = [prompts[i] + conts[i] for i in chunk]
            ids, mask = _pad(seqs, pad)
            gold = torch.full_like(ids, -100)
            for r, i in enumerate(chunk):
                p, c = len(prompts[i]), len(conts[i])
                # logits at position t predict token t+1: positions p-1 .. p+c-2 predict the continuation
                gold[r, p - 1 : p + c - 1] = torch.tensor(conts[i])
            ids, mask, gold = ids.to(dev), mask.to(dev), gold.to(dev)
            keep = gold != -100
            if _accepts_logits_to_keep(model):
                # project only the scored positions onto the vocabulary (saves time and memory)
                logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits
            else:
                logits = _real_logits(model(input_ids=ids, attention_mask=mask).logits, ids.shape[1])
        keep = gold != -100
        if logits.dim() == 3:
            logits = logits[keep]
        lp = torch.log_softmax(logits.float(), dim=-1)
        tok_lp = lp.gather(-1, gold[keep].unsqueeze(-1)).squeeze(-1)
        rows = keep.nonzero()[:, 0]
        per_row = torch.zeros(len(chunk), dtype=torch.float32, device=dev).index_add_(0, rows, tok_lp)
        for r, i in enumerate(chunk):
            scores[i] = float(per_row[r])
        if progress is not None:
            progress.update(len(chunk))
    return scores


def _cache_argument(model) -> str:
    """The forward argument that takes a KV cache: ``cache`` (transformers >= 5.2x) or ``past_key_values``."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        params = inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        params = {}
    return "cache" if "cache" in params else "past_key_values"


def _sum_logprobs(logits, gold) -> torch.Tensor:
    """Per-row sum of log p(gold) over the positions where gold != -100."""
    keep = gold != -100
    lp = torch.log_softmax(logits[keep].float(), dim=-1).gather(-1, gold[keep].unsqueeze(-1)).squeeze(-1)
    return torch.zeros(gold.shape[0], device=gold.device).index_add_(0, keep.nonzero()[:, 0], lp)


def _score_chunk_causal(model, chunk, pad: int, dev) -> list[float]:
    """A batch of examples: prompts left-padded (explicit position ids) -> KV cache; the cache rows are
    repeated per option, then the options (minus their last token) run right-padded after it."""
    prompts = [p for p, _ in chunk]
    conts = [c for _, cs in chunk for c in cs]
    owner = torch.tensor([b for b, (_, cs) in enumerate(chunk) for _ in cs], device=dev)
    ids, pmask = _pad(prompts, pad, left=True)
    ids, pmask = ids.to(dev), pmask.to(dev)
    ppos = (pmask.cumsum(1) - 1).clamp(min=0)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    keep = {"logits_to_keep": 1} if _accepts_logits_to_keep(base) else {}  # only the last position is scored
    out = model(input_ids=ids, attention_mask=pmask, position_ids=ppos, use_cache=True, **keep)
    first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)[owner]
    total = first.gather(-1, torch.tensor([c[0] for c in conts], device=dev).unsqueeze(-1)).squeeze(-1)
    longest = max(len(c) for c in conts) - 1
    if longest > 0:
        cache = getattr(out, "cache", None) or out.past_key_values
        cache.batch_select_indices(owner)
        cids, cmask = _pad([c[:-1] for c in conts], pad)
        gold, _ = _pad([c[1:] for c in conts], -100)
        plen = pmask.sum(1)[owner]
        cpos = plen.unsqueeze(1) + torch.arange(cids.shape[1], device=dev).unsqueeze(0)
        mask = torch.cat([pmask[owner], cmask.to(dev)], dim=1)
        kw = {_cache_argument(model): cache}
        rest = model(input_ids=cids.to(dev), attention_mask=mask, position_ids=cpos, use_cache=True, **kw).logits
        total = total + _sum_logprobs(rest, gold.to(dev))
    return [float(x) for x in total]


def _score_chunk_seq2seq(model, chunk, pad: int, dev) -> list[float]:
    """A batch of examples: one encoder pass over the prompts, its states repeated per option."""
    from transformers.modeling_outputs import BaseModelOutput

    owner = torch.tensor([b for b, (_, cs) in enumerate(chunk) for _ in cs], device=dev)
    ids, mask = _pad([p for p, _ in chunk], pad)
    ids, mask = ids.to(dev), mask.to(dev)
    hidden = model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state[owner]
    labels, _ = _pad([c for _, cs in chunk for c in cs], -100)
    labels = labels.to(dev)
    logits = model(encoder_outputs=BaseModelOutput(last_hidden_state=hidden), attention_mask=mask[owner],
                   labels=labels).logits
    return [float(x) for x in _sum_logprobs(logits, labels)]


def _is_prefix_tuning(model) -> bool:
    cfg = getattr(model, "peft_config", None)
    return bool(cfg) and any(str(getattr(c, "peft_type", "")).endswith("PREFIX_TUNING") for c in cfg.values())


def _greedy_no_cache(model, prompt: list[int], max_new: int, eos: set, dev) -> list[int]:
    ids = list(prompt)
    new: list[int] = []
    for _ in range(max_new):
        logits = model(input_ids=torch.tensor([ids], device=dev), use_cache=False).logits
        nxt = int(logits[0, -1].argmax())
        if nxt in eos:
            break
        new.append(nxt)
        ids.append(nxt)
    return new


def can_share_prefix(model) -> bool:
    """Prefix sharing needs a plain model or a LoRA-style adapter (virtual tokens change the input)."""
    from flanbuild.finetune.adapters import is_prompt_learning

    return not is_prompt_learning(model)


def _chunks(groups, order: list[int], batch_size: int):
    """Consecutive examples (in ``order``) with at most ``batch_size`` options together (>= 1 example)."""
    chunk, pairs = [], 0
    for g in order:
        n = len(groups[g][1])
        if chunk and pairs + n > batch_size:
            yield chunk
            chunk, pairs = [], 0
        chunk.append(g)
        pairs += n
    if chunk:
        yield chunk


@torch.inference_mode()
def score_grouped(model, codec: Codec, groups: list[tuple[list[int], list[list[int]]]], batch_size: int = 16,
                  progress=None) -> list[list[float]]:
    """Option log-likelihoods of every ``(prompt, options)`` group, sharing the prompt.

    Examples are sorted by prompt length and batched (at most ``batch_size`` options per batch). One
    forward over the batch's prompts fills the KV cache (left padding with explicit position ids;
    encoder-decoders: one encoder pass); its rows are repeated for each option, and all options run as
    one batch from the cache (the first option token is scored from the prompt's last position). Equal
    to :func:`score_continuations` up to float rounding. Falls back to it for prompt-learning adapters
    (virtual tokens) and for empty prompts or options.
    """
    model.eval()
    if not can_share_prefix(model):
        return _ungrouped(model, codec, groups, batch_size, progress)
    dev = _device(model)
    pad = codec.tokenizer.pad_token_id
    one = _score_chunk_seq2seq if codec.kind == SEQ2SEQ else _score_chunk_causal
    out: list[list[float]] = [[] for _ in groups]
    plain = [g for g, (p, cs) in enumerate(groups) if not p or not cs or any(not c for c in cs)]
    for g, scores in zip(plain, _ungrouped(model, codec, [groups[g] for g in plain], batch_size, progress)):
        out[g] = scores
    skip = set(plain)
    order = sorted((g for g in range(len(groups)) if g not in skip), key=lambda g: -len(groups[g][0]))
    for chunk in _chunks(groups, order, batch_size):
        flat = one(model, [groups[g] for g in chunk], pad, dev)
        k = 0
        for g in chunk:
            n = len(groups[g][1])
            out[g] = flat[k : k + n]
            k += n
        if progress is not None:
            progress.update(k)
    return out


def _ungrouped(model, codec, groups, batch_size, progress) -> list[list[float]]:
    prompts = [p for p, conts in groups for _ in conts]
    flat = [c for _, conts in groups for c in conts]
    scores = score_continuations(model, codec, prompts, flat, batch_size, progress)
    out, k = [], 0
    for _, conts in groups:
        out.append(scores[k : k + len(conts)])
        k += len(conts)
    return out


def _generation_config(model, codec: Codec, max_new_tokens: int):
    """Greedy decoding that stops at the tokenizer's EOS or any EOS the model's generation config names."""
    from transformers import GenerationConfig

    tok = codec.tokenizer
    eos = [tok.eos_token_id]
    mg = getattr(model, "generation_config", None)
    if mg is not None and mg.eos_token_id is not None:
        extra = mg.eos_token_id if isinstance(mg.eos_token_id, list) else [mg.eos_token_id]
        eos += [e for e in extra if e not in eos]
    gc = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=tok.pad_token_id,
        eos_token_id=eos if len(eos) > 1 else eos[0],
        bos_token_id=getattr(model.config, "bos_token_id", None),
        decoder_start_token_id=getattr(model.config, "decoder_start_token_id", None) if codec.kind == SEQ2SEQ else None,
    )
    return gc, eos


@torch.inference_mode()
def greedy_generate(model, codec: Codec, prompts: list[list[int]], max_new_tokens: int, batch_size: int = 16,
                    progress=None) -> list[str]:
    """Greedy decoding of every prompt; returns the decoded continuations (special tokens dropped)."""
    model.eval()
    dev = _device(model)
    tok = codec.tokenizer
    gc, eos = _generation_config(model, codec, max_new_tokens)
    n = len(prompts)
    order = sorted(range(n), key=lambda i: -len(prompts[i]))
    out = [""] * n
    if codec.kind != SEQ2SEQ and _is_prefix_tuning(model):
        # peft passes the learned prefix as past_key_values, which generate()'s own cache overrides in
        # transformers 5: decode step by step without a cache instead (slower, correct)
        for i in order:
            out[i] = tok.decode(_greedy_no_cache(model, prompts[i], max_new_tokens, set(eos), dev),
                                skip_special_tokens=True).strip()
            if progress is not None:
                progress.update(1)
        return out
    for s in range(0, n, batch_size):
        chunk = order[s : s + batch_size]
        seqs = [prompts[i] for i in chunk]
        left = codec.kind != SEQ2SEQ
        ids, mask = _pad(seqs, tok.pad_token_id, left=left)
        ids, mask = ids.to(dev), mask.to(dev)
        gen = model.generate(input_ids=ids, attention_mask=mask, generation_config=gc)
        new = gen[:, ids.shape[1] :] if left else gen
        texts = tok.batch_decode(new.tolist(), skip_special_tokens=True)
        for r, i in enumerate(chunk):
            out[i] = texts[r].strip()
        if progress is not None:
            progress.update(len(chunk))
    return out
