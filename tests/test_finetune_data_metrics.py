"""flanbuild.finetune without torch: metrics, FLAN aggregation, reading mixtures, user errors."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # running the file without an installed flanbuild
    sys.path.insert(0, str(REPO))

from flanbuild.errors import FlanbuildError  # noqa: E402
from flanbuild.finetune import data as fdata  # noqa: E402
from flanbuild.finetune import metrics as M  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SCHEMA = pa.schema([
    ("inputs", pa.string()), ("targets", pa.string()), ("task_source", pa.string()), ("task_name", pa.string()),
    ("template_type", pa.string()), ("cluster", pa.string()), ("template_id", pa.int32()),
    ("options", pa.list_(pa.string())), ("example_id", pa.string()), ("references", pa.list_(pa.string())),
])


def _row(task, ex, tid, inputs="q", target="a", options=(), refs=None, cluster="c", ttype="zs_opt"):
    return dict(inputs=inputs, targets=target, task_source="t", task_name=task, template_type=ttype, cluster=cluster,
                template_id=tid, options=list(options), example_id=f"{task}/validation/{ex}", references=list(refs or [target]))


def _write(root: Path, split: str, rows: list[dict], shards: int = 1, schema=SCHEMA) -> Path:
    (root / "data").mkdir(parents=True, exist_ok=True)
    k = (len(rows) + shards - 1) // shards
    for j in range(shards):
        pq.write_table(pa.Table.from_pylist(rows[j * k:(j + 1) * k], schema=schema),
                       root / "data" / f"{split}-{j:05d}-of-{shards:05d}.parquet")
    return root


# ------------------------------------------------------------------------------------------------
# import hygiene


def test_import_does_not_pull_torch_or_transformers():
    code = ("import sys; import flanbuild.finetune, flanbuild.finetune.cli, flanbuild.finetune.data, "
            "flanbuild.finetune.metrics, flanbuild.finetune.config, flanbuild.finetune.pretrained, "
            "flanbuild.finetune.adapters, flanbuild.finetune.compare, flanbuild.finetune.fewshot, "
            "flanbuild.finetune.cot, flanbuild.finetune.progress; "
            "bad = [m for m in ('torch', 'transformers', 'datasets', 'rouge_score', 'peft', 'sacrebleu', 'gguf') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)
    assert res.returncode == 0, res.stdout + res.stderr


def test_add_parsers_registers_both_commands():
    import argparse

    from flanbuild.finetune.cli import add_parsers, evaluate_handler, finetune_handler

    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command"))
    a = parser.parse_args(["finetune", "--data", "D", "--model", "tiny-t5", "--out", "R", "--max-steps", "7", "--packing"])
    assert a.func is finetune_handler and a.max_steps == 7 and a.packing and a.split == "train"
    b = parser.parse_args(["evaluate", "--data", "D", "--model", "R", "--max-examples", "3"])
    assert b.func is evaluate_handler and b.split == "eval" and b.max_examples == 3 and b.out is None


# ------------------------------------------------------------------------------------------------
# metrics on fixed strings (hand-computed values)


def test_squad_normalisation_and_exact_match():
    assert M.normalize_answer("The  Cat, sat!") == "cat sat"
    assert M.normalize_answer("An apple a day") == "apple day"
    assert M.exact_match("the Eiffel Tower!", "Eiffel tower") == 1.0
    assert M.exact_match("Eiffel", "Eiffel tower") == 0.0


def test_token_f1_hand_computed():
    # pred tokens [cat, sat, on, mat], ref [cat, on, mat]: P = 3/4, R = 1, F1 = 6/7
    assert M.token_f1("the cat sat on the mat", "a cat on a mat") == pytest.approx(6 / 7)
    assert M.token_f1("cat cat", "cat") == pytest.approx(2 * 0.5 * 1 / 1.5)  # counts are clipped
    assert M.token_f1("", "the") == 1.0  # both empty after normalisation
    assert M.token_f1("x", "") == 0.0
    assert M.token_f1("dog", "cat") == 0.0


def test_rouge_l_hand_computed():
    pytest.importorskip("rouge_score")
    # LCS of [the cat sat on the mat] and [the cat lay on the mat] is 5 of 6 tokens each way
    assert M.rouge_l("the cat sat on the mat", "the cat lay on the mat") == pytest.approx(5 / 6)
    # LCS 2 ("a", "c"), P = 2/3, R = 2/4 -> F = 4/7
    assert M.rouge_l("a b c", "a x c y") == pytest.approx(4 / 7)
    assert M.rouge_l("same words", "same words") == pytest.approx(1.0)


def test_generation_scores_take_max_over_references():
    pytest.importorskip("rouge_score")
    s = M.generation_scores("Paris", ["London", "paris."])
    assert s["exact_match"] == 1.0 and s["f1"] == 1.0 and s["rougeL"] == 1.0
    s = M.generation_scores("in Paris France", ["Paris", "France Paris"])
    assert s["exact_match"] == 0.0
    assert s["f1"] == pytest.approx(0.8)  # vs "France Paris": P 2/3, R 1
    assert s["rougeL"] == pytest.approx(0.5)  # vs "Paris": LCS 1, P 1/3, R 1


def test_classification_scores_raw_and_length_normalised():
    # raw: -3 > -4 picks "no"; per character: -3/2 = -1.5 < -4/10 = -0.4 picks "absolutely"
    s = M.classification_scores([-3.0, -4.0], ["no", "absolutely"], "absolutely")
    assert s == {"accuracy": 0.0, "accuracy_norm": 1.0}
    s = M.classification_scores([-0.1, -4.0], ["yes", "no"], "yes")
    assert s == {"accuracy": 1.0, "accuracy_norm": 1.0}


# ------------------------------------------------------------------------------------------------
# aggregation: mean over rows per template, mean/best over templates per task, mean over tasks per cluster


def _rec(task, cluster, tid, ex, kind, **scores):
    return {"task": task, "cluster": cluster, "template_id": tid, "template_type": "zs_opt" if kind == "classification" else "zs_noopt",
            "example_id": str(ex), "kind": kind, "scores": scores}


RECORDS = (
    # task A (cluster X): template 1 accuracy 0.5, template 2 accuracy 1.0, inverted template 3 (generation) excluded
    [_rec("A", "X", 1, 0, "classification", accuracy=1.0, accuracy_norm=1.0),
     _rec("A", "X", 1, 1, "classification", accuracy=0.0, accuracy_norm=1.0),
     _rec("A", "X", 2, 0, "classification", accuracy=1.0, accuracy_norm=0.0),
     _rec("A", "X", 2, 1, "classification", accuracy=1.0, accuracy_norm=0.0),
     _rec("A", "X", 3, 0, "generation", exact_match=0.0, f1=0.2, rougeL=0.2)]
    # task B (cluster X, generation): template 1 EM .5 / rougeL .5, template 2 EM 0 / rougeL .2
    + [_rec("B", "X", 1, 0, "generation", exact_match=1.0, f1=1.0, rougeL=0.6),
       _rec("B", "X", 1, 1, "generation", exact_match=0.0, f1=0.5, rougeL=0.4),
       _rec("B", "X", 2, 0, "generation", exact_match=0.0, f1=0.1, rougeL=0.2),
       _rec("B", "X", 2, 1, "generation", exact_match=0.0, f1=0.3, rougeL=0.2)]
    # task C (cluster Y): one template, accuracy 1/4
    + [_rec("C", "Y", 1, i, "classification", accuracy=float(i == 0), accuracy_norm=0.0) for i in range(4)]
)


def test_aggregation_matches_hand_computed_values():
    r = M.aggregate(RECORDS)
    a, b, c = r["tasks"]["A"], r["tasks"]["B"], r["tasks"]["C"]
    assert a["kind"] == "classification" and a["metric"] == "accuracy"
    assert a["templates"]["1:zs_opt"]["scores"]["accuracy"] == pytest.approx(0.5)
    assert a["score_mean"] == pytest.approx(0.75) and a["score_best"] == pytest.approx(1.0)
    assert a["best_template"] == "2:zs_opt"
    assert a["mean"]["accuracy_norm"] == pytest.approx(0.5) and a["best"]["accuracy_norm"] == pytest.approx(1.0)
    assert a["excluded_templates"] == ["3:zs_noopt"] and a["num_templates"] == 2
    assert a["num_examples"] == 2 and a["num_rows"] == 5
    assert b["metric"] == "rougeL" and b["score_mean"] == pytest.approx(0.35) and b["score_best"] == pytest.approx(0.5)
    assert b["mean"]["exact_match"] == pytest.approx(0.25) and b["mean"]["f1"] == pytest.approx(0.475)
    assert c["score_mean"] == pytest.approx(0.25) and c["score_best"] == pytest.approx(0.25)
    x, y = r["clusters"]["X"], r["clusters"]["Y"]
    assert x["tasks"] == ["A", "B"] and x["score_mean"] == pytest.approx((0.75 + 0.35) / 2)
    assert x["score_best"] == pytest.approx((1.0 + 0.5) / 2)
    assert y["score_mean"] == pytest.approx(0.25)
    assert r["overall"]["task_mean"] == pytest.approx((0.75 + 0.35 + 0.25) / 3)
    assert r["overall"]["cluster_mean"] == pytest.approx(((0.75 + 0.35) / 2 + 0.25) / 2)


def test_aggregation_uses_the_task_card_metric():
    r = M.aggregate(RECORDS, {"B": "exact_match"})
    b = r["tasks"]["B"]
    assert b["metric"] == "exact_match" and b["score_mean"] == pytest.approx(0.25) and b["score_best"] == pytest.approx(0.5)
    assert r["clusters"]["X"]["score_mean"] == pytest.approx((0.75 + 0.25) / 2)


def test_table_is_readable():
    table = M.format_table(M.aggregate(RECORDS))
    lines = table.splitlines()
    assert lines[0].split()[:5] == ["task", "cluster", "metric", "mean", "best"]
    row_a = next(line for line in lines if line.startswith("A "))
    assert "75.0" in row_a and "100.0" in row_a and "2:zs_opt" in row_a
    assert any(line.startswith("X") and "55.0" in line for line in lines)


# ------------------------------------------------------------------------------------------------
# reading mixtures and --max-examples


def _eval_rows():
    rows = []
    for ex in range(10):
        for tid in (1, 2, 3):
            rows.append(_row("cls", ex, tid, options=["yes", "no"], target="yes", cluster="nli"))
    for ex in range(5):
        for tid in (1, 2):
            rows.append(_row("gen", ex, tid, target="ans", refs=["ans", "answer"], cluster="qa", ttype="zs_noopt"))
    return rows


def test_read_split_over_shards_and_fingerprint(tmp_path):
    rows = _eval_rows()
    _write(tmp_path, "eval", rows, shards=3)
    (tmp_path / "mixture.json").write_text(json.dumps({"fingerprint": "abc123", "tasks": {"gen": {"metric": "exact_match"}}}))
    got = fdata.read_split(tmp_path, "eval")
    assert len(got["inputs"]) == len(rows)
    assert got["example_id"] == [r["example_id"] for r in rows]  # shard order kept
    assert got["references"][-1] == ["ans", "answer"] and got["options"][0] == ["yes", "no"]
    assert got["template_id"][2] == 3
    assert fdata.fingerprint(tmp_path) == "abc123"
    # not a flanbuild manifest (no "flanbuild_manifest" version): plain FLAN-style Parquet, no task metadata
    assert fdata.task_metrics(tmp_path) == {}
    assert fdata.available_splits(tmp_path) == ["eval"]


def test_read_split_fills_optional_columns(tmp_path):
    schema = pa.schema([("inputs", pa.string()), ("targets", pa.string())])
    _write(tmp_path, "train", [{"inputs": "a", "targets": "b"}], schema=schema)
    got = fdata.read_split(tmp_path, "train")
    assert got["options"] == [[]] and got["references"] == [["b"]] and got["example_id"] == ["train/0"]
    assert fdata.fingerprint(tmp_path) is None


def test_max_examples_is_deterministic_and_keeps_every_template(tmp_path):
    rows = _eval_rows()
    data = fdata.read_split(_write(tmp_path / "a", "eval", rows), "eval")
    shuffled = rows[:]
    random.Random(3).shuffle(shuffled)
    data2 = fdata.read_split(_write(tmp_path / "b", "eval", shuffled), "eval")
    keep = fdata.select_rows(data, 4)
    keep2 = fdata.select_rows(data2, 4)
    ids = {data["example_id"][i] for i in keep}
    assert ids == {data2["example_id"][i] for i in keep2}  # independent of row order
    assert sum(1 for e in ids if e.startswith("cls/")) == 4 and sum(1 for e in ids if e.startswith("gen/")) == 4
    assert len(keep) == 4 * 3 + 4 * 2  # every template of a kept example
    assert len(fdata.select_rows(data, 100)) == len(rows)
    assert fdata.select_rows(data, 2, tasks=("gen",)) == [i for i in fdata.select_rows(data, 2) if data["task_name"][i] == "gen"]
    with pytest.raises(FlanbuildError, match="max-examples"):
        fdata.select_rows(data, 0)
    with pytest.raises(FlanbuildError, match="nope"):
        fdata.select_rows(data, None, tasks=("nope",))


def test_bad_data_gives_one_line_flanbuild_errors(tmp_path):
    cases = []
    with pytest.raises(FlanbuildError, match="data directory not found") as e:
        fdata.read_split(tmp_path / "missing", "train")
    cases.append(e)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FlanbuildError, match="no Parquet files") as e:
        fdata.read_split(tmp_path / "empty", "train")
    cases.append(e)
    _write(tmp_path / "mix", "eval", _eval_rows())
    with pytest.raises(FlanbuildError, match=r"no 'train' split .*found: eval") as e:
        fdata.read_split(tmp_path / "mix", "train")
    cases.append(e)
    with pytest.raises(FlanbuildError, match="bad split name") as e:
        fdata.read_split(tmp_path / "mix", "../eval")
    cases.append(e)
    _write(tmp_path / "nocol", "eval", [{"inputs": "x"}], schema=pa.schema([("inputs", pa.string())]))
    with pytest.raises(FlanbuildError, match="missing column 'targets'") as e:
        fdata.read_split(tmp_path / "nocol", "eval")
    cases.append(e)
    (tmp_path / "bad" / "data").mkdir(parents=True)
    (tmp_path / "bad" / "data" / "eval-00000-of-00001.parquet").write_text("not parquet")
    with pytest.raises(FlanbuildError, match="cannot read Parquet") as e:
        fdata.read_split(tmp_path / "bad", "eval")
    cases.append(e)
    for e in cases:
        assert "\n" not in str(e.value)
