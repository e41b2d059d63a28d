"""Issue 13 on tiny models (fast): peft adapters, chat templates, scoring conventions, prefix-shared
scoring, few-shot exemplars, chain-of-thought scoring, BLEU and inverted templates, progress lines."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_finetune import COLOURS, FAST, _texts, cls_rows, gen_rows, write_mixture  # noqa: E402
from test_finetune import mixture, one_thread  # noqa: E402,F401 - the same fixtures (pytest finds them here)

from flanbuild.errors import FlanbuildError  # noqa: E402
from flanbuild.finetune import evaluate, finetune  # noqa: E402
from flanbuild.finetune.cot import cot_scores, extract_answer  # noqa: E402
from flanbuild.finetune.fewshot import build_pools, exemplars_for  # noqa: E402
from flanbuild.finetune.metrics import aggregate, corpus_bleu  # noqa: E402
from flanbuild.finetune.modeling import CAUSAL, SEQ2SEQ, Codec, build_preset  # noqa: E402
from flanbuild.finetune.progress import Progress  # noqa: E402
from flanbuild.finetune.scoring import lm_eval_pair, requests, score_continuations, score_grouped  # noqa: E402

CHAT = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>\n{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant: {% endif %}")


# ------------------------------------------------------------------------------------------------
# scoring: conventions and prefix sharing


def _groups(codec, scoring="flan"):
    rows = cls_rows()[:6] + [dict(r, options=[r["targets"], "something longer than that"]) for r in gen_rows()[:3]]
    return [requests(codec, scoring, r["inputs"], r["options"]) for r in rows]


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gpt2", "tiny-t5"])
@pytest.mark.parametrize("scoring", ["flan", "lm-eval"])
def test_prefix_shared_scores_equal_separate_scores(preset, scoring):
    kind = SEQ2SEQ if preset == "tiny-t5" else CAUSAL
    model, tok = build_preset(preset, _texts())
    model.eval()
    codec = Codec.for_model(model, tok, kind, 64, 16)
    groups = _groups(codec, scoring)
    shared = score_grouped(model, codec, groups)
    flat = score_continuations(model, codec, [p for p, cs in groups for _ in cs], [c for _, cs in groups for c in cs], 4)
    assert len(flat) == sum(len(s) for s in shared)
    assert max(abs(a - b) for a, b in zip([x for s in shared for x in s], flat)) < 1e-4


def test_lm_eval_requests_follow_the_harness_encoding():
    model, tok = build_preset("tiny-llama", _texts())
    codec = Codec.for_model(model, tok, CAUSAL, 64, 16)
    prompt, conts = requests(codec, "lm-eval", "What colour is the apple?", COLOURS)
    ctx = tok("What colour is the apple?", add_special_tokens=False)["input_ids"]
    assert prompt == codec.leading + ctx
    for o, c in zip(COLOURS, conts):
        whole = tok("What colour is the apple? " + o, add_special_tokens=False)["input_ids"]
        assert c == whole[len(ctx):] and tok.eos_token_id not in c  # " " + option, no EOS
    # trailing white space of the context moves to the continuation (lm-eval _encode_pair)
    ctx_ids, cont_ids = lm_eval_pair(tok, "Question: x\n", "yes")
    assert tok.decode(ctx_ids) == "Question: x" and tok.decode(cont_ids) == "\nyes"
    # flan: prompt + separator, option + EOS
    fp, fc = requests(codec, "flan", "What colour is the apple?", ["red"])
    assert tok.decode(fp).endswith("apple?\n") and fc[0][-1] == tok.eos_token_id


def test_lm_eval_and_flan_defaults_per_model_type(mixture, tmp_path):
    run = tmp_path / "run"
    finetune(data=str(mixture), model="tiny-llama", out=str(run), max_steps=0, **FAST)
    r = evaluate(data=str(mixture), model=str(run), max_examples=2, max_new_tokens=2, threads=1, quiet=True)
    assert r["settings"]["scoring"] == "flan"  # a flanbuild run: its training format
    r = evaluate(data=str(mixture), model=str(run), max_examples=2, max_new_tokens=2, threads=1, quiet=True,
                 scoring="lm-eval", share_prefix=False)
    assert r["settings"]["scoring"] == "lm-eval" and "no EOS" in r["settings"]["classification"]
    from flanbuild.finetune.evaluation import default_scoring

    assert default_scoring(CAUSAL, {}) == "lm-eval" and default_scoring(SEQ2SEQ, {}) == "flan"


# ------------------------------------------------------------------------------------------------
# chat templates


def test_chat_template_prompt_and_loss_on_the_answer_only():
    model, tok = build_preset("tiny-llama", _texts())
    tok.chat_template = CHAT
    codec = Codec.for_model(model, tok, CAUSAL, 64, 16, chat=True)
    text = codec.prompt_text("What colour is the apple?", shots=[("What colour is the sky?", "blue")])
    assert text == ("<s>user: What colour is the sky?</s>\n<s>assistant: blue</s>\n"
                    "<s>user: What colour is the apple?</s>\n<s>assistant: ")
    ex = codec.example("What colour is the apple?", "red")
    scored = [t for t in ex["labels"] if t != -100]
    assert scored == tok("red", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert tok.decode(ex["input_ids"][: len(ex["input_ids"]) - len(scored)]).endswith("assistant: ")
    with pytest.raises(FlanbuildError, match="no chat template"):
        Codec.for_model(model, build_preset("tiny-llama", _texts())[1], CAUSAL, chat=True)


def test_chat_template_training_is_recorded_and_reused_by_evaluate(mixture, tmp_path):
    model, tok = build_preset("tiny-llama", _texts())
    tok.chat_template = CHAT
    base = tmp_path / "base"
    model.save_pretrained(base)
    tok.save_pretrained(base)
    run = tmp_path / "run"
    s = finetune(data=str(mixture), model=str(base), out=str(run), max_steps=3, **FAST)
    assert s["chat_template"] is True
    r = evaluate(data=str(mixture), model=str(run), max_examples=1, max_new_tokens=2, threads=1, quiet=True)
    assert r["settings"]["chat_template"] is True and r["settings"]["scoring"] == "flan"
    s = finetune(data=str(mixture), model=str(base), out=str(tmp_path / "plain"), max_steps=1, chat_template="none", **FAST)
    assert s["chat_template"] is False


# ------------------------------------------------------------------------------------------------
# peft


@pytest.mark.parametrize("method", ["lora", "prompt-tuning", "prefix-tuning", "p-tuning"])
def test_peft_adapter_trains_and_evaluate_loads_it(mixture, tmp_path, method):
    pytest.importorskip("peft", reason="peft not installed (pip install peft)")
    run = tmp_path / method
    s = finetune(data=str(mixture), model="tiny-llama", out=str(run), max_steps=25, lr=1e-2, batch_size=8,
                 peft=method, num_virtual_tokens=4, **FAST)
    assert s["peft"] == method and 0 < s["trainable_parameters"] < s["parameters"]
    assert (run / "adapter_config.json").is_file() and not (run / "model.safetensors").exists()
    assert (run / "base_model" / "config.json").is_file()  # a random preset's base travels with the run
    assert s["loss_after"] < s["loss_before"], s
    r = evaluate(data=str(mixture), model=str(run), max_examples=2, max_new_tokens=3, threads=1, quiet=True)
    assert r["peft"] == method and r["tasks"]["toy_colour"]["num_rows"] == 4
    assert r["tasks"]["toy_echo"]["num_rows"] == 4


def test_lora_scores_shared_prefix_equal_separate(mixture, tmp_path):
    pytest.importorskip("peft", reason="peft not installed (pip install peft)")
    from flanbuild.finetune.modeling import load_model

    run = tmp_path / "lora"
    finetune(data=str(mixture), model="tiny-llama", out=str(run), max_steps=5, lr=1e-2, peft="lora", **FAST)
    model, tok, kind = load_model(str(run))
    codec = Codec.for_model(model, tok, kind, 64, 16)
    groups = _groups(codec)
    shared = [x for s in score_grouped(model, codec, groups) for x in s]
    flat = score_continuations(model, codec, [p for p, cs in groups for _ in cs], [c for _, cs in groups for c in cs])
    assert max(abs(a - b) for a, b in zip(shared, flat)) < 1e-4


def test_peft_user_mistakes(mixture, tmp_path):
    with pytest.raises(FlanbuildError, match="--peft must be one of"):
        finetune(data=str(mixture), model="tiny-llama", out=str(tmp_path / "r"), peft="qlora", **FAST)
    with pytest.raises(FlanbuildError, match="--num-virtual-tokens"):
        finetune(data=str(mixture), model="tiny-llama", out=str(tmp_path / "r"), peft="prompt-tuning",
                 num_virtual_tokens=0, **FAST)


# ------------------------------------------------------------------------------------------------
# few-shot exemplars


def test_exemplars_are_seeded_same_template_and_never_the_evaluated_example():
    rows = {k: [r[k] for r in cls_rows()] for k in cls_rows()[0]}
    idx = list(range(len(rows["inputs"])))
    pools = build_pools(rows, None, {"toy_colour"})
    a = exemplars_for(idx, rows, pools, 3, seed=0)
    assert a == exemplars_for(idx, rows, pools, 3, seed=0)
    assert a != exemplars_for(idx, rows, pools, 3, seed=1)
    by_input = {r["inputs"]: r for r in cls_rows()}
    for i in idx:
        shots = [by_input[q] for q, _ in a[i]]
        assert len({s["example_id"] for s in shots}) == 3
        assert all(s["example_id"] != rows["example_id"][i] for s in shots)
        assert all(s["template_id"] == rows["template_id"][i] for s in shots)
        assert all(t == s["targets"] for (_, t), s in zip(a[i], shots))
    with pytest.raises(FlanbuildError, match="only 15 other"):
        exemplars_for(idx, rows, pools, 16, seed=0)


def test_exemplars_prefer_the_train_split(tmp_path):
    train = [dict(r, example_id=r["example_id"].replace("/train/", "/tr/"), inputs="TRAIN " + r["inputs"]) for r in cls_rows()]
    ev = [dict(r, example_id=r["example_id"].replace("/train/", "/dev/")) for r in cls_rows()]
    mix = write_mixture(tmp_path / "mix", train, ev, shards=1)
    from flanbuild.finetune.data import read_split

    rows, tr = read_split(mix, "eval"), read_split(mix, "train")
    pools = build_pools(rows, tr, {"toy_colour"})
    shots = exemplars_for([0, 1], rows, pools, 2, seed=0)
    assert pools["toy_colour"].source == "train"
    assert all(q.startswith("TRAIN ") for i in (0, 1) for q, _ in shots[i])


def test_evaluate_with_shots_puts_exemplars_in_the_prompt(mixture, tmp_path):
    run = tmp_path / "run"
    finetune(data=str(mixture), model="tiny-llama", out=str(run), max_steps=0, **FAST)
    preds = tmp_path / "p.jsonl"
    r = evaluate(data=str(mixture), model=str(run), max_examples=3, max_new_tokens=2, threads=1, quiet=True,
                 shots=2, max_input_len=256, predictions=str(preds))
    assert r["settings"]["shots"] == 2 and r["settings"]["shots_pool"]["toy_colour"] == "train"
    assert r["tasks"]["toy_colour"]["num_rows"] == 6
    r0 = evaluate(data=str(mixture), model=str(run), max_examples=3, max_new_tokens=2, threads=1, quiet=True,
                  max_input_len=256, predictions=str(tmp_path / "p0.jsonl"))
    lp = [json.loads(x)["option_logprobs"] for x in preds.read_text().splitlines() if "option_logprobs" in x]
    lp0 = [json.loads(x)["option_logprobs"] for x in (tmp_path / "p0.jsonl").read_text().splitlines() if "option_logprobs" in x]
    assert lp != lp0  # the exemplars change the context
    assert r0["settings"]["shots"] == 0


# ------------------------------------------------------------------------------------------------
# chain of thought, BLEU, inverted templates


def test_cot_answer_extraction():
    assert extract_answer("12 + 24 = 36.\nSo the answer is 36.") == "36"
    assert extract_answer("Natalia sold 48/2 = 24 clips.\n#### 1,072") == "1,072"
    assert extract_answer("The final answer is (B).") == "(B)"
    assert extract_answer("first 3 then 5 apples") == "5"
    assert extract_answer("no digits here") == ""
    assert cot_scores("24 + 12 = 36. The answer is 36", ["In total 36.\nSo the answer is 36."])["cot_exact_match"] == 1.0
    assert cot_scores("The answer is $1,000.00.", ["#### 1000"])["cot_exact_match"] == 1.0
    assert cot_scores("The answer is 35.", ["So the answer is 36."])["cot_exact_match"] == 0.0
    assert cot_scores("So the answer is yes.", ["... So the answer is Yes."])["cot_exact_match"] == 1.0


def test_evaluate_scores_chain_of_thought_rows_on_the_final_answer(tmp_path):
    cot = [dict(inputs=f"What is {a} plus {b}? Think step by step.", targets=f"{a} + {b} = {a + b}.\nSo the answer is {a + b}.",
                task_source="cot", task_name="toy_math", template_type="zs_noopt", cluster="chain_of_thought",
                template_id=1, options=[], example_id=f"toy_math/test/{a}", references=[])
           for a, b in [(1, 2), (3, 4), (5, 6)]]
    mix = write_mixture(tmp_path / "mix", cot, cot, shards=1)
    run = tmp_path / "run"
    finetune(data=str(mix), model="tiny-llama", out=str(run), max_steps=0, **FAST)
    preds = tmp_path / "p.jsonl"
    r = evaluate(data=str(mix), model=str(run), max_new_tokens=4, threads=1, quiet=True, predictions=str(preds))
    t = r["tasks"]["toy_math"]
    assert t["metric"] == "cot_exact_match" and "cot_exact_match" in t["mean"]
    lines = [json.loads(x) for x in preds.read_text().splitlines()]
    assert [x["reference_answer"] for x in lines] == ["3", "7", "11"] and all("answer" in x for x in lines)
    r = evaluate(data=str(mix), model=str(run), max_new_tokens=4, threads=1, quiet=True, cot="off")
    assert r["tasks"]["toy_math"]["metric"] == "rougeL"


def _rec(task, tid, pred, refs, kind="generation"):
    from flanbuild.finetune.metrics import generation_scores

    return dict(task=task, cluster="translation", template_id=tid, template_type="zs_noopt", example_id=f"{task}/{pred}",
                kind=kind, scores=generation_scores(pred, refs), prediction=pred, references=refs)


def test_bleu_is_corpus_bleu_and_inverted_templates_are_never_counted():
    pytest.importorskip("sacrebleu", reason="sacrebleu not installed")
    import sacrebleu

    preds = ["the cat sat on the mat", "a dog runs in the park today"]
    refs = [["the cat sat on the mat"], ["the dog runs in the park", "a dog is running in the park today"]]
    want = sacrebleu.corpus_bleu(preds, [[refs[0][0], refs[1][0]], [refs[0][0], refs[1][1]]]).score / 100
    assert abs(corpus_bleu(preds, refs) - want) < 1e-12 and 0 < want < 1
    recs = [_rec("wmt", 1, p, r) for p, r in zip(preds, refs)]
    recs += [_rec("wmt", 2, "zzz", r) for r in refs]  # a bad forward template
    recs += [_rec("wmt", 9, r[0], r) for r in refs]  # inverted: perfect, must not count
    agg = aggregate(recs, {"wmt": "bleu"}, {"wmt": {9}})
    t = agg["tasks"]["wmt"]
    assert t["metric"] == "bleu" and t["num_templates"] == 2
    assert abs(t["score_best"] - want) < 1e-12 and abs(t["score_mean"] - want / 2) < 1e-12
    assert t["best_template"] == "1:zs_noopt" and t["inverted_templates"]["9:zs_noopt"]["bleu"] == pytest.approx(1.0)
    assert "9:zs_noopt" in t["excluded_templates"] and t["templates"]["9:zs_noopt"]["inverted"]


def test_task_metric_and_inverted_templates_come_from_the_manifest(tmp_path, monkeypatch):
    from flanbuild.finetune import data as fdata

    (tmp_path / "mixture.json").write_text(json.dumps({"flanbuild_manifest": 2}))
    manifest = {"tasks": {"wmt": {"metric": "bleu", "role": "eval", "cluster": "translation", "inverted_templates": [8, 9]}}}
    import flanbuild.output.manifest as man

    monkeypatch.setattr(man, "load_manifest", lambda root: manifest if Path(root) == tmp_path else None)
    info = fdata.task_info(tmp_path)
    assert info == {"wmt": {"metric": "bleu", "role": "eval", "cluster": "translation", "inverted_templates": [8, 9]}}
    assert fdata.task_metrics(tmp_path) == {"wmt": "bleu"}


# ------------------------------------------------------------------------------------------------
# progress


def test_progress_prints_rate_and_eta_one_line_per_update_when_not_a_tty():
    t = [0.0]
    stream = io.StringIO()
    p = Progress("scoring", 100, "pairs", stream=stream, interval=5, clock=lambda: t[0])
    for _ in range(10):
        t[0] += 1.0
        p.update(10)
    lines = stream.getvalue().splitlines()
    # first update, then one per 5 s, then the final one
    assert len(lines) == 3 and "\r" not in stream.getvalue()
    assert lines[0].startswith("scoring: 10/100 pairs  10%  10.00 pairs/s") and "ETA 0:09" in lines[0]
    assert lines[-1].startswith("scoring: 100/100 pairs 100%") and "ETA 0:00" in lines[-1]


def test_finetune_and_evaluate_print_progress(mixture, tmp_path, capfd):
    run = tmp_path / "run"
    finetune(data=str(mixture), model="tiny-gpt2", out=str(run), max_steps=4, **{**FAST, "quiet": False})
    err = capfd.readouterr().err
    assert "train: 4/4 steps 100%" in err and "ETA" in err
    evaluate(data=str(mixture), model=str(run), max_examples=2, max_new_tokens=2, threads=1)
    err = capfd.readouterr().err
    assert "rank classification: 16/16 pairs 100%" in err and "greedy generation: 4/4 rows 100%" in err


def test_metric_and_inverted_templates_of_a_real_build_reach_the_evaluator(mirror, tmp_path):
    """A real build (mirror data): multi30k's card metric is bleu and templates 8-10 translate backwards."""
    from flanbuild.cli.main import main as flanbuild_main

    out = tmp_path / "mix"
    rc = flanbuild_main(["build", "--out", str(out), "--heldout", "translation", "--tasks", "multi30k_ende,glue_sst2",
                         "--data-dir", str(mirror), "--eval-cap", "2", "--task-cap", "40", "--quiet"])
    assert rc == 0
    run = tmp_path / "run"
    finetune(data=str(out), model="tiny-t5", out=str(run), max_steps=0, **FAST)
    r = evaluate(data=str(out), model=str(run), max_new_tokens=4, threads=1, quiet=True)
    t = r["tasks"]["multi30k_ende"]
    assert t["metric"] == "bleu" and "bleu" in t["mean"]
    inverted = {k for k, v in t["templates"].items() if v["inverted"]}
    assert {int(k.split(":")[0]) for k in inverted} == {8, 9, 10}
    assert set(t["inverted_templates"]) == inverted and inverted <= set(t["excluded_templates"])
    assert t["num_templates"] == len(t["templates"]) - 3
    assert "is inverted (reported, not counted)" in r["table"]
