"""Chain-of-thought scoring: generate a rationale, extract the final answer, exact match.

The final answer of a generated (or reference) text is, first match wins:

1. what follows GSM8K's ``#### `` marker;
2. what follows the last "answer is" / "answer:" / "Result:" phrase (``So the answer is 36.``,
   ``The final answer is (B).``), up to the end of that line, without a trailing full stop;
3. the last number in the text.

Two answers match when both are numbers of equal value (``1,000`` = ``1000.0``, ``$8`` = ``8``) or
when they are equal after SQuAD normalisation (case, punctuation, articles).
"""

from __future__ import annotations

import re

from flanbuild.finetune.metrics import normalize_answer

_HASHES = re.compile(r"####\s*([^\n]+)")
_PHRASE = re.compile(r"(?:answer\s*(?:is|:)|result\s*(?:is|:))\s*:?\s*([^\n]+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")


def extract_answer(text: str) -> str:
    """The final answer stated in ``text`` ("" when none)."""
    m = _HASHES.search(text)
    if m:
        return _clean(m.group(1))
    found = _PHRASE.findall(text)
    if found:
        return _clean(found[-1])
    nums = _NUMBER.findall(text)
    return _clean(nums[-1]) if nums else ""


def _clean(answer: str) -> str:
    answer = answer.strip()
    while answer and answer[-1] in ".!;,":
        answer = answer[:-1].rstrip()
    return answer


def _number(text: str) -> float | None:
    t = text.replace(",", "").replace("$", "").strip()
    t = t[:-1] if t.endswith("%") else t
    try:
        return float(t)
    except ValueError:
        return None


def answers_match(prediction: str, reference: str) -> bool:
    a, b = _number(prediction), _number(reference)
    if a is not None and b is not None:
        return abs(a - b) < 1e-9
    return normalize_answer(prediction) == normalize_answer(reference) != ""


def cot_scores(prediction: str, reference_texts: list[str]) -> dict:
    """``cot_exact_match`` (1.0 when the extracted answers match any reference's) and the answers."""
    pred = extract_answer(prediction)
    refs = [extract_answer(r) or r.strip() for r in reference_texts] or [""]
    return {"cot_exact_match": float(any(answers_match(pred, r) for r in refs)), "answer": pred, "reference_answer": refs[0]}
