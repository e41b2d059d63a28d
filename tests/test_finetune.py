"""flanbuild finetune / evaluate with tiny models on CPU (fixture Parquet written here with pyarrow).

Everything runs offline: presets build a random model and train a byte-level BPE tokenizer on the
fixture's own text. torch runs with one thread here (tiny models; much faster on a busy 2-core box).
"""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from flanbuild.errors import FlanbuildError  # noqa: E402
from flanbuild.finetune import evaluate, finetune  # noqa: E402
from flanbuild.cli.main import main as cli_main  # noqa: E402 - the shipped entry point
from flanbuild.finetune.modeling import CAUSAL, SEQ2SEQ, Codec, build_preset, preset_kind  # noqa: E402
from flanbuild.finetune.scoring import greedy_generate, score_continuations  # noqa: E402

SCHEMA = pa.schema([
    ("inputs", pa.string()), ("targets", pa.string()), ("task_source", pa.string()), ("task_name", pa.string()),
    ("template_type", pa.string()), ("cluster", pa.string()), ("template_id", pa.int32()),
    ("options", pa.list_(pa.string())), ("example_id", pa.string()), ("references", pa.list_(pa.string())),
])
COLOURS = ["red", "green", "blue", "yellow"]
NAMES = ["apple", "river", "stone", "cloud", "tiger", "piano", "lemon", "candle",
         "forest", "rocket", "violin", "garden", "mirror", "pepper", "window", "anchor"]
CLS_TEMPLATES = [
    "What colour is the {x}?\nOPTIONS:\n- red\n- green\n- blue\n- yellow",
    "The {x} is painted in which colour? Choose: red, green, blue or yellow.",
]
GEN_TEMPLATES = ["Repeat the word: {x}", "Say {x} again."]
FAST = dict(max_input_len=64, max_target_len=16, save_steps=0, threads=1, quiet=True, logging_steps=5)


def cls_rows() -> list[dict]:
    """A classification task: 16 objects, an arbitrary (balanced) colour each, 2 templates."""
    labels = [COLOURS[i % 4] for i in range(len(NAMES))]
    random.Random(1).shuffle(labels)
    return [
        dict(inputs=tpl.format(x=x), targets=labels[i], task_source="toy", task_name="toy_colour",
             template_type="zs_opt", cluster="toy_cls", template_id=t + 1, options=list(COLOURS),
             example_id=f"toy_colour/train/{i}", references=[labels[i]])
        for i, x in enumerate(NAMES) for t, tpl in enumerate(CLS_TEMPLATES)
    ]


def gen_rows() -> list[dict]:
    """A generation task with two references per row (the target is the first)."""
    return [
        dict(inputs=tpl.format(x=x), targets=x, task_source="toy", task_name="toy_echo", template_type="zs_noopt",
             cluster="toy_gen", template_id=t + 1, options=[], example_id=f"toy_echo/train/{i}",
             references=[x, x.upper() + "!"])
        for i, x in enumerate(NAMES[:8]) for t, tpl in enumerate(GEN_TEMPLATES)
    ]


def write_mixture(root: Path, train: list[dict], eval_rows: list[dict], shards: int = 2) -> Path:
    (root / "data").mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", train), ("eval", eval_rows)):
        k = (len(rows) + shards - 1) // shards
        for j in range(shards):
            pq.write_table(pa.Table.from_pylist(rows[j * k:(j + 1) * k], schema=SCHEMA),
                           root / "data" / f"{split}-{j:05d}-of-{shards:05d}.parquet")
    (root / "mixture.json").write_text(json.dumps({"fingerprint": "fixture-fp"}))
    (root / "README.md").write_text("fixture\n")
    return root


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def mixture(tmp_path_factory) -> Path:
    rows = cls_rows() + gen_rows()
    return write_mixture(tmp_path_factory.mktemp("mix"), rows, rows)


def _texts():
    return [r["inputs"] for r in cls_rows() + gen_rows()] + COLOURS + NAMES


# ------------------------------------------------------------------------------------------------
# training


def _check_run_dir(run: Path, kind: str):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    auto = AutoModelForSeq2SeqLM if kind == SEQ2SEQ else AutoModelForCausalLM
    model = auto.from_pretrained(run)
    tok = AutoTokenizer.from_pretrained(run)
    assert model.config.is_encoder_decoder == (kind == SEQ2SEQ)
    assert tok("red")["input_ids"]
    state = json.loads((run / "trainer_state.json").read_text())
    assert any("loss" in h for h in state["log_history"])
    meta = json.loads((run / "flanbuild_finetune.json").read_text())
    assert meta["kind"] == kind and meta["data_fingerprint"] == "fixture-fp"
    return state, meta


@pytest.mark.parametrize("preset", ["tiny-t5", "tiny-llama"])
def test_tiny_model_trains_and_loss_drops(mixture, tmp_path, preset):
    run = tmp_path / preset
    s = finetune(data=str(mixture), model=preset, out=str(run), max_steps=40, lr=3e-3, batch_size=8, **FAST)
    assert s["kind"] == preset_kind(preset) and s["global_step"] == 40
    assert s["loss_after"] < 0.6 * s["loss_before"], s  # measured on the same fixed rows before/after
    assert s["last_logged_loss"] < s["first_logged_loss"]
    state, meta = _check_run_dir(run, s["kind"])
    assert state["global_step"] == 40 and meta["global_step"] == 40


def test_decoder_only_loss_covers_target_and_eos_only(mixture):
    model, tok = build_preset("tiny-llama", _texts())
    codec = Codec.for_model(model, tok, CAUSAL, 64, 16)
    ex = codec.example("What colour is the apple?", "red")
    n_target = len(tok("red", add_special_tokens=False)["input_ids"])
    scored = [t for t in ex["labels"] if t != -100]
    assert scored[-1] == tok.eos_token_id and len(scored) == n_target + 1
    assert ex["input_ids"][-len(scored):] == scored
    # the prompt is a prefix of prompt+target: no EOS appended to the prompt
    assert tok.eos_token_id not in codec.prompt("What colour is the apple?")


def test_packing_trains_and_attention_does_not_cross_examples(mixture, tmp_path):
    from flanbuild.finetune.train import PackedDataset, PadCollator

    rows = cls_rows() + gen_rows()
    for preset in ("tiny-llama", "tiny-gpt2"):
        model, tok = build_preset(preset, _texts())
        model.eval()
        codec = Codec.for_model(model, tok, CAUSAL, 64, 16)
        ds = PackedDataset([r["inputs"] for r in rows], [r["targets"] for r in rows], codec, seed=0)
        assert len(ds) < len(rows) and ds.num_examples == len(rows)
        batch = PadCollator(tok.pad_token_id, packed=True)([ds[0], ds[1]])
        assert "attention_mask" not in batch
        pos = batch["position_ids"][0].tolist()
        starts = [i for i, p in enumerate(pos) if p == 0]
        assert len(starts) >= 3  # several examples in the first row (plus padding)
        with torch.inference_mode():  # as in training: no attention mask, no KV cache
            packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
            a, b = starts[1], starts[2]
            alone = model(input_ids=batch["input_ids"][:, a:b][:1], use_cache=False).logits[0]
        # the second example inside the packed row sees only itself
        assert torch.allclose(packed[a:b], alone, atol=1e-4), (preset, (packed[a:b] - alone).abs().max())
        assert ds.check_isolation(model) < 1e-4
    s = finetune(data=str(mixture), model="tiny-gpt2", out=str(tmp_path / "packed"), max_steps=30, lr=3e-3,
                 batch_size=2, packing=True, **FAST)
    assert s["packing"] and s["loss_after"] < 0.6 * s["loss_before"], s


def test_resume_from_checkpoint_and_refuse_to_clobber(mixture, tmp_path):
    run = tmp_path / "run"
    kw = {**FAST, "save_steps": 5}
    finetune(data=str(mixture), model="tiny-llama", out=str(run), max_steps=10, **kw)
    assert (run / "checkpoint-10" / "config.json").is_file()
    with pytest.raises(FlanbuildError, match="already holds a run"):
        finetune(data=str(mixture), model="tiny-llama", out=str(run), max_steps=10, **kw)
    s = finetune(data=str(mixture), model="tiny-llama", out=str(run), max_steps=15, resume=True, **kw)
    state = json.loads((run / "trainer_state.json").read_text())
    assert s["global_step"] == 15 and state["global_step"] == 15
    steps = [h["step"] for h in state["log_history"] if "loss" in h]
    assert steps[0] == 1 and steps[-1] == 15  # history continued, not restarted
    s = finetune(data=str(mixture), model="tiny-llama", out=str(run), max_steps=3, overwrite=True, **kw)
    assert s["global_step"] == 3 and not (run / "checkpoint-10").exists()


# ------------------------------------------------------------------------------------------------
# scoring


def _pairs(codec):
    rows = cls_rows()[:10] + gen_rows()[:4]
    prompts, conts = [], []
    for r in rows:
        p = codec.prompt(r["inputs"])
        for o in (r["options"] or [r["targets"], "something longer than that"]):
            prompts.append(p)
            conts.append(codec.target(o))
    return prompts, conts


@pytest.mark.parametrize("preset", ["tiny-t5", "tiny-llama", "tiny-gpt2"])
def test_batched_option_scores_equal_one_at_a_time(preset):
    torch.manual_seed(0)
    model, tok = build_preset(preset, _texts(), seed=1)
    codec = Codec.for_model(model, tok, preset_kind(preset), 64, 16)
    prompts, conts = _pairs(codec)
    assert len({len(p) + len(c) for p, c in zip(prompts, conts)}) > 3  # batches really are padded
    batched = score_continuations(model, codec, prompts, conts, batch_size=7)
    single = score_continuations(model, codec, prompts, conts, batch_size=1)
    assert max(abs(a - b) for a, b in zip(batched, single)) < 1e-4
    assert len({round(x, 3) for x in single}) > 5  # non-trivial scores


@pytest.mark.parametrize("preset", ["tiny-t5", "tiny-llama"])
def test_option_score_equals_minus_model_loss(preset):
    """The scored positions are the target tokens + EOS (no off-by-one): -score / n == HF's loss."""
    model, tok = build_preset(preset, _texts(), seed=2)
    model.eval()
    kind = preset_kind(preset)
    codec = Codec.for_model(model, tok, kind, 64, 16)
    ex = codec.example("What colour is the tiger?", "yellow")
    n = sum(1 for t in ex["labels"] if t != -100)
    with torch.inference_mode():
        loss = model(input_ids=torch.tensor([ex["input_ids"]]), labels=torch.tensor([ex["labels"]])).loss.item()
    score = score_continuations(model, codec, [codec.prompt("What colour is the tiger?")], [codec.target("yellow")])[0]
    assert -score / n == pytest.approx(loss, abs=1e-4)


def test_batched_greedy_generation_equals_one_at_a_time():
    for preset in ("tiny-llama", "tiny-t5"):
        model, tok = build_preset(preset, _texts(), seed=3)
        with torch.no_grad():  # keep a random model off its special tokens so that it says something
            model.get_output_embeddings().weight[:4] = 0
        codec = Codec.for_model(model, tok, preset_kind(preset), 64, 16)
        prompts = [codec.prompt(r["inputs"]) for r in gen_rows() + cls_rows()[:6]]
        batched = greedy_generate(model, codec, prompts, max_new_tokens=6, batch_size=5)
        single = greedy_generate(model, codec, prompts, max_new_tokens=6, batch_size=1)
        assert batched == single
        assert any(batched)


# ------------------------------------------------------------------------------------------------
# evaluation end to end


def test_memorised_model_scores_100_and_fresh_model_does_not(mixture, tmp_path):
    trained, fresh = tmp_path / "trained", tmp_path / "fresh"
    s = finetune(data=str(mixture), model="tiny-t5", out=str(trained), max_steps=200, lr=3e-3,
                 lr_scheduler="constant", batch_size=8, **FAST)
    finetune(data=str(mixture), model="tiny-t5", out=str(fresh), max_steps=0, **FAST)
    assert s["loss_after"] < 0.1
    out = tmp_path / "results.json"
    r = evaluate(data=str(mixture), model=str(trained), out=str(out), max_new_tokens=8, threads=1, quiet=True)
    r0 = evaluate(data=str(mixture), model=str(fresh), max_new_tokens=8, threads=1, quiet=True)
    colour, colour0 = r["tasks"]["toy_colour"], r0["tasks"]["toy_colour"]
    assert colour["score_mean"] == 1.0 and colour["mean"]["accuracy_norm"] == 1.0
    assert colour0["score_best"] <= 0.5  # chance is 0.25 with four balanced options
    echo, echo0 = r["tasks"]["toy_echo"], r0["tasks"]["toy_echo"]
    assert echo["metric"] == "rougeL" and echo["mean"]["exact_match"] > echo0["mean"]["exact_match"]
    saved = json.loads(out.read_text())
    assert saved["data_fingerprint"] == "fixture-fp" and saved["model"] == str(trained)
    assert saved["num_examples"] == 16 + 8 and saved["num_rows"] == 32 + 16
    assert set(saved["clusters"]) == {"toy_cls", "toy_gen"}
    assert set(saved["tasks"]["toy_colour"]["templates"]) == {"1:zs_opt", "2:zs_opt"}
    assert saved["tasks"]["toy_colour"]["templates"]["1:zs_opt"]["num_rows"] == 16
    # --max-examples: N distinct examples per task, every template of each
    r4 = evaluate(data=str(mixture), model=str(trained), max_examples=4, max_new_tokens=8, threads=1, quiet=True)
    assert r4["tasks"]["toy_colour"]["num_examples"] == 4 and r4["tasks"]["toy_colour"]["num_rows"] == 8
    assert r4["tasks"]["toy_echo"]["num_rows"] == 8 and r4["num_examples"] == 8


@pytest.mark.slow
def test_memorised_decoder_only_model_scores_100(tmp_path):
    """The causal scoring path end to end (~10 s: a decoder-only preset needs ~400 steps to memorise)."""
    mix = write_mixture(tmp_path / "mix", cls_rows(), cls_rows())
    run = tmp_path / "llama"
    s = finetune(data=str(mix), model="tiny-llama", out=str(run), max_steps=400, lr=1e-3, lr_scheduler="constant",
                 batch_size=8, **FAST)
    assert s["loss_after"] < 0.05, s
    r = evaluate(data=str(mix), model=str(run), threads=1, quiet=True)
    assert r["kind"] == CAUSAL and r["tasks"]["toy_colour"]["score_mean"] == 1.0


def test_inverted_templates_of_classification_tasks_are_skipped_unless_asked(tmp_path):
    inverted = [dict(r, template_id=9, template_type="zs_noopt", options=[], inputs="Name something " + r["targets"],
                     targets=r["example_id"].split("/")[-1], references=[]) for r in cls_rows()[::2]]
    mix = write_mixture(tmp_path / "mix", cls_rows(), cls_rows() + inverted)
    run = tmp_path / "run"
    finetune(data=str(mix), model="tiny-t5", out=str(run), max_steps=0, **FAST)
    r = evaluate(data=str(mix), model=str(run), threads=1, quiet=True, max_new_tokens=4)
    t = r["tasks"]["toy_colour"]
    assert t["skipped_templates"] == ["9:zs_noopt"] and "9:zs_noopt" not in t["templates"]
    r = evaluate(data=str(mix), model=str(run), threads=1, quiet=True, max_new_tokens=4, all_templates=True)
    t = r["tasks"]["toy_colour"]
    assert t["templates"]["9:zs_noopt"]["kind"] == "generation" and t["excluded_templates"] == ["9:zs_noopt"]
    assert t["num_templates"] == 2


def test_cli_finetune_then_evaluate(mixture, tmp_path, capsys):
    run, res = tmp_path / "run", tmp_path / "res.json"
    rc = cli_main(["finetune", "--data", str(mixture), "--model", "tiny-gpt2", "--out", str(run), "--max-steps", "5",
                   "--max-input-len", "64", "--max-target-len", "16", "--save-steps", "0", "--threads", "1", "--quiet"])
    assert rc == 0 and (run / "model.safetensors").is_file()
    rc = cli_main(["evaluate", "--data", str(mixture), "--model", str(run), "--out", str(res), "--max-examples", "2",
                   "--max-new-tokens", "4", "--threads", "1", "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0 and "toy_colour" in out and "toy_cls" in out and "fixture-fp" in out
    assert json.loads(res.read_text())["tasks"]["toy_echo"]["num_examples"] == 2


# ------------------------------------------------------------------------------------------------
# user mistakes: one line, exit code 2, no traceback


def test_user_mistakes_are_one_line_errors(mixture, tmp_path, capsys):
    nocfg = tmp_path / "not_a_model"
    nocfg.mkdir()
    (tmp_path / "empty").mkdir()
    base = ["--max-input-len", "64", "--threads", "1", "--quiet"]
    cases = [
        (["finetune", "--data", str(tmp_path / "missing"), "--model", "tiny-t5", "--out", str(tmp_path / "r")], "data directory not found"),
        (["finetune", "--data", str(tmp_path / "empty"), "--model", "tiny-t5", "--out", str(tmp_path / "r")], "no Parquet files"),
        (["finetune", "--data", str(mixture), "--model", "tiny-bert", "--out", str(tmp_path / "r")], "unknown preset 'tiny-bert'"),
        (["finetune", "--data", str(mixture), "--model", str(nocfg), "--out", str(tmp_path / "r")], "has no config.json"),
        (["finetune", "--data", str(mixture), "--model", "tiny-t5", "--out", str(tmp_path / "r"), "--split", "test"], "no 'test' split"),
        (["finetune", "--data", str(mixture), "--model", "tiny-t5", "--out", str(tmp_path / "r"), "--packing"], "decoder-only"),
        (["finetune", "--data", str(mixture), "--model", "tiny-t5", "--out", str(tmp_path / "r"), "--resume"], "no checkpoint"),
        (["finetune", "--data", str(mixture), "--model", "./no/such/dir", "--out", str(tmp_path / "r")], "model directory not found"),
        (["finetune", "--data", str(mixture), "--model", "tiny-gpt2", "--out", str(tmp_path / "r"), "--lr-scheduler", "bogus"], "bad training argument"),
        (["finetune", "--data", str(mixture), "--model", "tiny-gpt2", "--out", str(tmp_path / "r"), "--batch-size", "0"], "--batch-size"),
        (["evaluate", "--data", str(mixture), "--model", "tiny-t5"], "is a preset"),
        (["evaluate", "--data", str(mixture), "--model", str(nocfg)], "has no config.json"),
        (["evaluate", "--data", str(mixture), "--model", str(nocfg), "--split", "../x"], "bad split name"),
        (["evaluate", "--data", str(mixture), "--model", "nobody/no-such-model"], "cannot load model"),
    ]
    for argv, msg in cases:
        rc = cli_main(argv + base)
        err = capsys.readouterr().err
        assert rc == 2, argv
        assert msg in err and err.startswith("flanbuild: error: ") and err.count("\n") == 1, (argv, err)
        assert "Traceback" not in err
    assert not (tmp_path / "r").exists()  # nothing written on a user mistake
    with pytest.raises(FlanbuildError, match="unknown preset"):
        finetune(data=str(mixture), model="tiny-nope", out=str(tmp_path / "r"))
