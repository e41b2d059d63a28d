"""``flanbuild export --format lm-eval``: the eval split as an lm-evaluation-harness task folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from conftest import REPO
from flanbuild.builder import BuildConfig, build
from flanbuild.errors import FlanbuildError
from flanbuild.output.lmeval import export_lmeval, summarize
from flanbuild.pipeline.mixer import MixConfig


@pytest.fixture
def toy_mixture(toy_registry, tmp_path) -> Path:
    """Held out: toy_nli (classification, template 4 inverted) and toy_gen (generation)."""
    out = tmp_path / "mix"
    build(BuildConfig(out=out, mix=MixConfig(heldout=("toy_nli", "toy_gen"))), registry=toy_registry)
    return out


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "flanbuild", *args], cwd=REPO, capture_output=True, text=True,
                          env=env)


def _isolated_env(tmp_path: Path) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}


def test_export_writes_one_yaml_per_task_and_template(toy_mixture, tmp_path):
    dest = tmp_path / "lm"
    r = _cli("export", str(toy_mixture), "--format", "lm-eval", "--out", str(dest), "-q")
    assert r.returncode == 0, r.stderr
    info = json.loads((dest / "lmeval.json").read_text())
    assert sorted(info["tasks"]) == ["gen_a", "nli_a", "nli_b"]
    assert info["tasks"]["nli_a"]["templates"] == [1, 2, 3]  # 4 is inverted: never scored as the task
    assert info["tasks"]["nli_a"]["output_type"] == "multiple_choice"
    assert info["tasks"]["gen_a"]["output_type"] == "generate_until"
    assert info["groups"] == ["flanbuild_toy_gen", "flanbuild_toy_nli", "flanbuild_heldout"]
    eval_rows = pq.read_table(next((toy_mixture / "data").glob("eval-*.parquet"))).to_pylist()
    for task, t in info["tasks"].items():
        group = yaml.safe_load((dest / task / "_group.yaml").read_text())
        assert group["group"] == f"flanbuild_{task}"
        assert group["task"] == [f"flanbuild_{task}_t{i}" for i in t["templates"]]
        for tid in t["templates"]:
            leaf = yaml.safe_load((dest / task / f"t{tid}.yaml").read_text())
            assert leaf["task"] == f"flanbuild_{task}_t{tid}" and leaf["dataset_path"] == "parquet"
            data = Path(leaf["dataset_kwargs"]["data_files"]["test"])
            assert data.is_absolute() and data.is_file() and leaf["test_split"] == "test"
            rows = pq.read_table(data).to_pylist()
            expected = [r for r in eval_rows if r["task_name"] == task and r["template_id"] == tid]
            assert [r["example_id"] for r in rows] == [r["example_id"] for r in expected]
            if leaf["output_type"] == "multiple_choice":
                assert (leaf["doc_to_text"], leaf["doc_to_choice"], leaf["doc_to_target"]) == ("inputs", "options", "gold")
                assert leaf["target_delimiter"] == "\n"
                assert all(r["options"][r["gold"]] == r["targets"] for r in rows)
                assert {m["metric"] for m in leaf["metric_list"]} == {"acc", "acc_norm"}
            else:
                assert leaf["output_type"] == "generate_until" and leaf["doc_to_target"] == "references"
                assert [m["metric"] for m in leaf["metric_list"]] == ["exact_match"]
                assert all(r["gold"] == -1 and r["references"] for r in rows)
    nli = yaml.safe_load((dest / "_clusters" / "toy_nli.yaml").read_text())
    assert nli["task"] == ["flanbuild_nli_a", "flanbuild_nli_b"]
    assert {m["metric"] for m in nli["aggregate_metric_list"]} == {"acc", "acc_norm"}
    assert all(m["weight_by_size"] is False for m in nli["aggregate_metric_list"])
    readme = (dest / "README.md").read_text()
    assert "--include_path" in readme and "python -m flanbuild.output.lmeval" in readme


def test_export_refuses_a_mixture_without_eval_rows(toy_mixture, tmp_path):
    manifest = json.loads((toy_mixture / "mixture.json").read_text())
    manifest["files"] = [f for f in manifest["files"] if not f["path"].startswith("data/eval-")]
    (toy_mixture / "mixture.json").write_text(json.dumps(manifest))
    with pytest.raises(FlanbuildError, match="no eval rows"):
        export_lmeval(toy_mixture, tmp_path / "lm")
    assert not (tmp_path / "lm").exists()


def test_export_refuses_to_overwrite_a_foreign_folder(toy_mixture, tmp_path):
    (tmp_path / "lm").mkdir()
    (tmp_path / "lm" / "notes.txt").write_text("mine")
    with pytest.raises(FlanbuildError, match="not a flanbuild lm-eval export"):
        export_lmeval(toy_mixture, tmp_path / "lm")
    export_lmeval(toy_mixture, tmp_path / "lm2")
    export_lmeval(toy_mixture, tmp_path / "lm2")  # its own export: replaced


def test_summarize_gives_flan_mean_and_best_template():
    def leaf(task, tid, cluster):
        return {"metadata": {"flanbuild_task": task, "template_id": tid, "cluster": cluster}}

    results = {
        "configs": {"flanbuild_a_t1": leaf("a", 1, "c"), "flanbuild_a_t2": leaf("a", 2, "c"),
                    "flanbuild_b_t1": leaf("b", 1, "c"), "other": {"metadata": {}}},
        "results": {"flanbuild_a_t1": {"acc,none": 0.2}, "flanbuild_a_t2": {"acc,none": 0.6},
                    "flanbuild_b_t1": {"exact_match,none": 0.5}, "other": {"acc,none": 1.0}},
    }
    s = summarize(results)
    assert s["tasks"]["a"]["mean"] == pytest.approx(0.4) and s["tasks"]["a"]["best_template"] == 2
    assert s["clusters"]["c"]["mean"] == pytest.approx((0.4 + 0.5) / 2)
    assert s["clusters"]["c"]["best"] == pytest.approx((0.6 + 0.5) / 2)


def test_lm_eval_task_manager_loads_the_export(toy_mixture, tmp_path):
    pytest.importorskip("lm_eval")
    dest = tmp_path / "lm"
    export_lmeval(toy_mixture, dest)
    info = json.loads((dest / "lmeval.json").read_text())
    code = textwrap.dedent(f"""
        import json
        from lm_eval.tasks import TaskManager, get_task_dict
        tm = TaskManager(include_path={str(dest)!r})
        names = sorted(n for n in tm.all_tasks if n.startswith("flanbuild_"))
        docs = {{}}
        def walk(d):
            for k, v in d.items():
                if isinstance(v, dict):
                    walk(v)
                else:
                    docs[v.config.task] = [len(list(v.test_docs())), v.config.output_type]
        walk(get_task_dict(["flanbuild_heldout"], tm))
        print(json.dumps({{"names": names, "docs": docs}}))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_isolated_env(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    leaves = {f"flanbuild_{t}_t{i}": v for t, v in info["tasks"].items() for i in v["templates"]}
    assert set(out["names"]) >= set(leaves) | set(info["groups"]) | {f"flanbuild_{t}" for t in info["tasks"]}
    assert set(out["docs"]) == set(leaves)
    for name, (n_docs, output_type) in out["docs"].items():
        task, tid = name[len("flanbuild_"):].rsplit("_t", 1)
        assert n_docs == pq.ParquetFile(dest / "data" / task / f"t{tid}.parquet").metadata.num_rows
        assert output_type == ("multiple_choice" if info["tasks"][task]["output_type"] == "multiple_choice"
                               else "generate_until")


TINY_MODEL = textwrap.dedent("""
    import sys, torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["a toy sentence with yes and no", "OPTIONS:\\n- yes\\n- no"] * 5,
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<|endoftext|>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<|endoftext|>",
                                   bos_token="<|endoftext|>", pad_token="<|endoftext|>")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(fast), n_positions=512, n_embd=16, n_layer=1, n_head=2,
                                       bos_token_id=fast.eos_token_id, eos_token_id=fast.eos_token_id))
    model.save_pretrained(sys.argv[1])
    fast.save_pretrained(sys.argv[1])
""")


@pytest.mark.slow
def test_lm_eval_runs_the_export_with_a_tiny_random_model(toy_mixture, tmp_path):
    pytest.importorskip("lm_eval")
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    env = _isolated_env(tmp_path)
    model = tmp_path / "model"
    r = subprocess.run([sys.executable, "-c", TINY_MODEL, str(model)], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    dest = tmp_path / "lm"
    assert _cli("export", str(toy_mixture), "--format", "lm-eval", "--out", str(dest), "-q").returncode == 0
    lm_eval = Path(sys.executable).parent / "lm_eval"
    cmd = [str(lm_eval) if lm_eval.exists() else "lm_eval", "--model", "hf", "--model_args", f"pretrained={model}",
           "--include_path", str(dest), "--tasks", "flanbuild_toy_nli,flanbuild_toy_gen", "--limit", "4",
           "--device", "cpu", "--output_path", str(tmp_path / "results")]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(next((tmp_path / "results").rglob("results_*.json")).read_text())
    assert 0.0 <= results["results"]["flanbuild_toy_nli"]["acc,none"] <= 1.0
    assert 0.0 <= results["results"]["flanbuild_toy_gen"]["exact_match,none"] <= 1.0
    summary = summarize(results)
    assert set(summary["clusters"]) == {"toy_nli", "toy_gen"}
    assert summary["tasks"]["nli_a"]["best_template"] in (1, 2, 3)
    r = subprocess.run([sys.executable, "-m", "flanbuild.output.lmeval",
                        str(next((tmp_path / "results").rglob("results_*.json")))], capture_output=True, text=True)
    assert r.returncode == 0 and "toy_nli: mean over templates" in r.stdout
