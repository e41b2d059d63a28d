"""Exports: each format loads in its consumer (datasets, TRL's SFTTrainer) or matches its documented schema."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flanbuild.errors import FlanbuildError
from flanbuild.output.export import FORMATS, convert, export
from conftest import read_split, toy_build


@pytest.fixture
def mixture(toy_registry, tmp_path) -> Path:
    return toy_build(toy_registry, tmp_path / "mix", shard_rows=150).out


source = read_split


def load(folder: Path, tmp_path: Path):
    datasets = pytest.importorskip("datasets")
    return datasets.load_dataset(str(folder), cache_dir=str(tmp_path / "hf-cache"))


COLUMNS = {
    "flan": ["inputs", "targets", "task_source"],
    "chat": ["messages", "inputs", "targets"],
    "prompt-completion": ["prompt", "completion", "task_source"],
    "alpaca": ["instruction", "input", "output", "task_source"],
}


@pytest.mark.parametrize("jsonl", [False, True], ids=["parquet", "jsonl"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_export_loads_with_datasets(mixture, tmp_path, fmt, jsonl):
    dest = tmp_path / f"exp-{fmt}"
    result = export(mixture, fmt, dest, jsonl=jsonl)
    ds = load(dest, tmp_path)
    assert sorted(ds) == ["eval", "train"]
    ext = "jsonl" if jsonl else "parquet"
    assert sorted(p.name for p in (dest / "data" / "train").iterdir()) == \
        [f"train-{i:05d}-of-00003.{ext}" for i in range(3)]  # one file per source shard
    for split in ("train", "eval"):
        src = source(mixture, split).to_pylist()
        rows = ds[split]
        assert rows.num_rows == len(src) == result.counts[split]
        assert rows.column_names[:len(COLUMNS[fmt])] == COLUMNS[fmt]
        for i in (0, len(src) // 2, len(src) - 1):
            s, r = src[i], rows[i]
            if fmt == "chat":
                assert r["messages"] == [{"role": "user", "content": s["inputs"]},
                                         {"role": "assistant", "content": s["targets"]}]
            elif fmt == "prompt-completion":
                assert (r["prompt"], r["completion"]) == (s["inputs"] + "\n", s["targets"])
                assert "inputs" not in r
            elif fmt == "alpaca":
                assert (r["instruction"], r["input"], r["output"]) == (s["inputs"], "", s["targets"])
            else:
                assert r == s
            assert (r["task_name"], r["example_id"], r["options"]) == (s["task_name"], s["example_id"], s["options"])
    info = json.loads((dest / "export.json").read_text())
    assert info["format"] == fmt and info["source"]["fingerprint"] == \
        json.loads((mixture / "mixture.json").read_text())["fingerprint"]


def test_llamafactory_dataset_info_matches_files(mixture, tmp_path):
    """LLaMA-Factory's file loader: every file of `file_name`'s folder, one type, columns as declared."""
    datasets = pytest.importorskip("datasets")
    for fmt in FORMATS:
        dest = export(mixture, fmt, tmp_path / fmt, jsonl=fmt == "alpaca").dest
        info = json.loads((dest / "dataset_info.json").read_text())
        assert sorted(info) == ["flan2021_eval", "flan2021_train"]
        for name, entry in info.items():
            folder = dest / entry["file_name"]
            files = sorted(os.listdir(folder))
            types = {{"parquet": "parquet", "jsonl": "json"}[f.rsplit(".", 1)[1]] for f in files}
            assert len(types) == 1  # "File types should be identical."
            ds = datasets.load_dataset(types.pop(), data_files=[str(folder / f) for f in files], split="train",
                                       cache_dir=str(tmp_path / "c"))
            assert ds.num_rows == json.loads((dest / "export.json").read_text())["counts"][name.rsplit("_", 1)[1]]
            if entry["formatting"] == "sharegpt":
                tags = entry["tags"]
                msgs = ds[0][entry["columns"]["messages"]]
                assert [m[tags["role_tag"]] for m in msgs] == [tags["user_tag"], tags["assistant_tag"]]
                assert all(isinstance(m[tags["content_tag"]], str) for m in msgs)
            else:
                assert entry.get("formatting", "alpaca") == "alpaca"
                for key in ("prompt", "query", "response"):
                    if key in entry["columns"]:
                        assert isinstance(ds[0][entry["columns"][key]], str)


def test_alpaca_is_axolotl_alpaca(mixture, tmp_path):
    """axolotl's `type: alpaca` reads instruction, input (may be empty) and output strings."""
    dest = export(mixture, "alpaca", tmp_path / "a").dest
    table = pq.read_table(next((dest / "data" / "train").glob("*.parquet")))
    for col in ("instruction", "input", "output"):
        assert table.schema.field(col).type == pa.string()
        assert table.column(col).null_count == 0
    assert set(table.column("input").to_pylist()) == {""}


def test_separator_and_schema(mixture):
    table = pq.read_table(next((mixture / "data").glob("train-*.parquet"))).slice(0, 5)
    out = convert(table, "prompt-completion", separator="\n\nAnswer: ")
    assert out.column("prompt").to_pylist() == [s + "\n\nAnswer: " for s in table.column("inputs").to_pylist()]
    assert convert(table, "prompt-completion", separator="").column("prompt").to_pylist() == \
        table.column("inputs").to_pylist()
    with pytest.raises(FlanbuildError, match="unknown export format 'sharegpt'"):
        convert(table, "sharegpt")


def test_export_is_atomic_and_refuses_foreign_folders(mixture, tmp_path, monkeypatch):
    dest = tmp_path / "exp"
    export(mixture, "chat", dest)
    before = {p: p.read_bytes() for p in dest.rglob("*") if p.is_file()}

    import flanbuild.output.export as ex

    calls = {"n": 0}
    real = ex.convert

    def failing(table, fmt, separator="\n"):
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("disk on fire")
        return real(table, fmt, separator)

    monkeypatch.setattr(ex, "convert", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        export(mixture, "alpaca", dest)
    assert {p: p.read_bytes() for p in dest.rglob("*") if p.is_file()} == before
    assert not list(tmp_path.glob(".exp.*"))
    monkeypatch.setattr(ex, "convert", real)

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FlanbuildError, match="not a flanbuild export"):
        export(mixture, "chat", foreign)
    with pytest.raises(FlanbuildError, match="would replace the mixture"):
        export(mixture, "chat", mixture)
    with pytest.raises(FlanbuildError, match="not a flanbuild output"):
        export(foreign, "chat", tmp_path / "x")
    # a re-export replaces the previous one; the default destination is inside OUT
    result = export(mixture, "alpaca", dest)
    assert json.loads((dest / "export.json").read_text())["format"] == "alpaca" and result.rows_per_second > 0
    assert export(mixture, "chat").dest == mixture / "exports" / "chat"


# -- TRL: the real consumer ---------------------------------------------------------------------

def _tiny_model_and_tokenizer(texts):
    """A random 1-layer Llama and a BPE tokenizer trained on ``texts`` (no download), with a chat template
    whose assistant turn is marked for ``assistant_only_loss``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "</s>", "<s>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                      show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", bos_token="<s>")
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] }}:\n"
        "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}</s>{% endgeneration %}"
        "{% else %}{{ m['content'] }}{% endif %}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:\n{% endif %}")
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    return LlamaForCausalLM(config), tok


@pytest.mark.parametrize("fmt", ["chat", "prompt-completion"])
def test_trl_sft_trainer_trains_on_the_export(mixture, tmp_path, fmt):
    pytest.importorskip("trl")
    import math

    from trl import SFTConfig, SFTTrainer

    dest = export(mixture, fmt, tmp_path / fmt).dest
    ds = load(dest, tmp_path)
    train = ds["train"].select(range(32))
    src = source(mixture, "train").slice(0, 32).to_pylist()
    model, tok = _tiny_model_and_tokenizer([r["inputs"] + "\n" + r["targets"] for r in src])
    args = SFTConfig(output_dir=str(tmp_path / "run"), max_steps=3, per_device_train_batch_size=4, learning_rate=1e-3,
                     report_to=[], max_length=256, logging_steps=1, save_strategy="no", use_cpu=True,
                     disable_tqdm=True, assistant_only_loss=fmt == "chat")
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tok)
    # what the loss is computed on: exactly the target (+ EOS), found through the export's columns
    for i in range(4):
        ex = trainer.train_dataset[i]
        trained = [t for t, label in zip(ex["input_ids"], ex["labels"]) if label != -100]
        assert tok.decode(trained) == src[i]["targets"] + "</s>"
    result = trainer.train()
    assert result.global_step == 3 and math.isfinite(result.training_loss)
