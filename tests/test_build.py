"""End-to-end builds on the toy catalog (fast) and on the real mirror (slow)."""

import json
import os
import subprocess
import sys

import pytest

from flanbuild.errors import FlanbuildError
from flanbuild.pipeline.mixer import MixConfig
from conftest import REPO, read_split, toy_build, write


def test_build_splits_clusters_and_counts(toy_registry, tmp_path):
    result = toy_build(toy_registry, tmp_path / "out")
    m = result.manifest
    train, evals = read_split(result.out, "train"), read_split(result.out, "eval")
    assert set(train.column("cluster").to_pylist()) == {"toy_sent", "toy_gen"}  # toy_para removed with toy_nli
    assert set(evals.column("cluster").to_pylist()) == {"toy_nli"}
    assert m["config"]["removed_clusters"] == ["toy_para"] and m["removed_tasks"] == ["para_a"]
    assert m["counts"] == {"train": train.num_rows, "eval": evals.num_rows}
    assert sum(f["rows"] for f in m["files"]) == train.num_rows + evals.num_rows
    assert evals.num_rows == (30 + 20) * 4  # every template of every eval example
    for name in ("sent_a", "sent_b", "gen_a"):
        assert m["tasks"][name]["rows"] == train.column("task_name").to_pylist().count(name)
    assert m["tasks"]["sent_a"]["requested"] == 300 and m["tasks"]["gen_a"]["requested"] == 80
    assert train.schema.field("template_id").type == "int32"
    card = (result.out / "README.md").read_text()
    assert "split: train" in card and "split: eval" in card and "sent_a" in card


def test_same_seed_same_bytes_other_seed_differs(toy_registry, tmp_path):
    a = toy_build(toy_registry, tmp_path / "a", seed=3)
    b = toy_build(toy_registry, tmp_path / "b", seed=3)
    c = toy_build(toy_registry, tmp_path / "c", seed=4)
    for f in a.manifest["files"]:
        assert (a.out / f["path"]).read_bytes() == (b.out / f["path"]).read_bytes()
    assert a.manifest["fingerprint"] == b.manifest["fingerprint"] != c.manifest["fingerprint"]
    assert (a.out / "mixture.json").read_bytes() == (b.out / "mixture.json").read_bytes().replace(b"/b", b"/a")


def test_loads_with_datasets(toy_registry, tmp_path):
    datasets = pytest.importorskip("datasets")
    out = toy_build(toy_registry, tmp_path / "out").out
    ds = datasets.load_dataset(str(out))
    assert sorted(ds) == ["eval", "train"]
    assert ds["train"].column_names[:5] == ["inputs", "targets", "task_source", "task_name", "template_type"]


def test_rebuild_in_place_is_not_served_from_the_datasets_cache(toy_registry, tmp_path):
    datasets = pytest.importorskip("datasets")
    cache = tmp_path / "hf-cache"
    out = tmp_path / "out"
    toy_build(toy_registry, out, seed=1)
    first = datasets.load_dataset(str(out), cache_dir=str(cache))["train"]["inputs"]
    toy_build(toy_registry, out, seed=2, mix=MixConfig(heldout=("toy_nli",), train_size=333))
    second = datasets.load_dataset(str(out), cache_dir=str(cache))["train"]
    assert second.num_rows == 333 and second["inputs"] != first
    assert second["inputs"] == read_split(out, "train").column("inputs").to_pylist()


def test_missing_data_is_skipped_or_strict(toy_registry, toy_catalog, tmp_path):
    (toy_catalog / "data" / "sent_b_train.jsonl").unlink()
    result = toy_build(toy_registry, tmp_path / "out")
    assert "sent_b" in result.manifest["skipped"] and "does not exist" in result.manifest["skipped"]["sent_b"]
    with pytest.raises(FlanbuildError, match="task sent_b:.*does not exist"):
        toy_build(toy_registry, tmp_path / "strict", strict=True)
    assert not (tmp_path / "strict").exists()


def test_failed_build_keeps_previous_output(toy_registry, toy_catalog, tmp_path):
    out = tmp_path / "out"
    first = toy_build(toy_registry, out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    # corrupt a label so rendering fails half-way through the build
    write(toy_catalog / "data" / "sent_b_train.jsonl", '{"text": "x", "label": 7}\n')
    with pytest.raises(FlanbuildError, match="outside the 2 options"):
        toy_build(toy_registry, out)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert not list(tmp_path.glob(".out.*"))  # no staging leftovers
    assert first.manifest["fingerprint"] == json.loads((out / "mixture.json").read_text())["fingerprint"]


def test_heldout_everything_leaves_no_training_data(toy_registry, tmp_path):
    with pytest.raises(FlanbuildError, match="no training data"):
        toy_build(toy_registry, tmp_path / "o", mix=MixConfig(heldout=("toy_nli", "toy_sent", "toy_gen")))


# -- the CLI: exit codes and one-line errors ---------------------------------------------------

def run_cli(*args, cwd=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FLANBUILD_DATA_DIR": ""}
    return subprocess.run([sys.executable, "-m", "flanbuild", *args], capture_output=True, text=True, env=env, cwd=cwd)


def toy_args(toy_catalog, out):
    return ["build", "--out", str(out), "--catalog", str(toy_catalog), "--heldout", "toy_nli",
            "--tasks", "nli_a,nli_b,para_a,sent_a,sent_b,gen_a", "-q"]


def test_cli_build(toy_catalog, tmp_path):
    r = run_cli(*toy_args(toy_catalog, tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "mixture.json").is_file()
    assert (tmp_path / "out" / "lengths.png").is_file()
    r = run_cli(*toy_args(toy_catalog, tmp_path / "plain"), "--no-plots")
    assert r.returncode == 0, r.stderr
    assert not list((tmp_path / "plain").glob("*.png")) and "lengths.png" not in (tmp_path / "plain" / "README.md").read_text()
    fingerprints = [json.loads((tmp_path / d / "mixture.json").read_text())["fingerprint"] for d in ("out", "plain")]
    assert fingerprints[0] == fingerprints[1]  # the same data files


@pytest.mark.parametrize("case", ["unknown_cluster", "syntax_error", "unknown_field", "missing_data_dir",
                                  "out_is_file", "unknown_task", "bad_weight"])
def test_cli_bad_input_one_line_error(toy_catalog, tmp_path, case):
    out = tmp_path / "out"
    args = toy_args(toy_catalog, out)
    expect = {
        "unknown_cluster": "unknown held-out cluster 'nope'",
        "syntax_error": "sent_a.yaml:4: task sent_a, template 1 (input), line 1 of the template: Jinja syntax error",
        "unknown_field": "unknown field(s) txet",
        "missing_data_dir": "directory /does/not/exist does not exist",
        "out_is_file": "exists and is a file",
        "unknown_task": "unknown task 'zzz'",
        "bad_weight": "weight for 'sent_a' must be > 0",
    }[case]
    if case == "unknown_cluster":
        args[args.index("toy_nli")] = "nope"
    elif case == "syntax_error":
        write(toy_catalog / "templates" / "sent_a.yaml", "task: sent_a\ntemplates:\n  - id: 1\n    input: '{{text'\n    target: x\n")
    elif case == "unknown_field":
        write(toy_catalog / "templates" / "sent_a.yaml", "task: sent_a\ntemplates:\n  - {id: 1, input: '{{txet}}', target: x}\n")
    elif case == "missing_data_dir":
        args += ["--data-dir", "/does/not/exist"]
    elif case == "out_is_file":
        out.write_text("not a directory")
    elif case == "unknown_task":
        args[args.index("--tasks") + 1] = "zzz"
    elif case == "bad_weight":
        args += ["--task-weight", "sent_a=0"]
    r = run_cli(*args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("flanbuild: error: "), r.stderr
    assert expect in lines[0]
    assert "Traceback" not in r.stderr
    assert out.is_file() if case == "out_is_file" else not out.exists()
    assert not list(tmp_path.glob(".out.*"))


def test_cli_debug_shows_traceback(toy_catalog, tmp_path):
    args = toy_args(toy_catalog, tmp_path / "o")
    args[args.index("toy_nli")] = "nope"
    r = run_cli(*args, "--debug")
    assert r.returncode == 2 and "Traceback" in r.stderr


def test_cli_tasks_render_lint(toy_catalog):
    r = run_cli("tasks", "--json", "--catalog", str(toy_catalog), "--cluster", "toy_sent")
    assert r.returncode == 0 and [t["name"] for t in json.loads(r.stdout)] == ["sent_a", "sent_b"]
    r = run_cli("render", "sent_a", "-n", "2", "--catalog", str(toy_catalog))
    assert r.returncode == 0 and r.stdout.count("--- template") == 8 and "OPTIONS:\n- no\n- yes" in r.stdout
    r = run_cli("render", "sent_a", "--template", "3", "--catalog", str(toy_catalog))
    assert r.returncode == 0 and "Answer no or yes. Text: sent_a train sentence number 0" in r.stdout
    r = run_cli("lint", "--catalog", str(toy_catalog), "--tasks", "sent_a,gen_a")
    assert r.returncode == 0, r.stdout + r.stderr


def test_cli_help_is_fast_and_lazy():
    code = "import sys, flanbuild.cli.main; flanbuild.cli.main.make_parser(); print(sorted(m for m in ('datasets','transformers','torch','pyarrow','jinja2') if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip() == "[]"


# -- the real mirror ----------------------------------------------------------------------------

@pytest.mark.slow
def test_default_mixture_on_mirror(mirror, tmp_path):
    datasets = pytest.importorskip("datasets")
    out = tmp_path / "mixture"
    r = run_cli("build", "--out", str(out), "--data-dir", str(mirror), "-q", cwd=REPO)
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "mixture.json").read_text())
    ds = datasets.load_dataset(str(out))
    assert sorted(ds) == ["eval", "train"]
    assert m["counts"] == {"train": ds["train"].num_rows, "eval": ds["eval"].num_rows}
    assert ds["train"].num_rows > 10_000 and ds["eval"].num_rows > 1_000
    excluded = set(m["config"]["heldout"]) | set(m["config"]["removed_clusters"])
    assert m["config"]["heldout"] == ["nli"] and "paraphrase" in excluded
    assert not excluded & set(ds["train"]["cluster"])
    assert set(ds["eval"]["cluster"]) <= set(m["config"]["heldout"])
    for name, info in m["tasks"].items():
        split = "train" if info["role"] == "train" else "eval"
        assert ds[split]["task_name"].count(name) == info["rows"]
    assert all(reason for reason in m["skipped"].values())  # none empty, however much the mirror holds
    again = tmp_path / "again"
    assert run_cli("build", "--out", str(again), "--data-dir", str(mirror), "-q", cwd=REPO).returncode == 0
    assert json.loads((again / "mixture.json").read_text())["fingerprint"] == m["fingerprint"]


@pytest.mark.slow
def test_flan2022_on_mirror(mirror, tmp_path):
    niv2 = mirror.parent / "niv2"
    args = ["build", "--mixture", "flan2022", "--data-dir", str(mirror), "--niv2-dir", str(niv2), "-q"]
    assert run_cli(*args, "--out", str(tmp_path / "a"), cwd=REPO).returncode == 0
    assert run_cli(*args, "--out", str(tmp_path / "b"), cwd=REPO).returncode == 0
    ma = json.loads((tmp_path / "a" / "mixture.json").read_text())
    assert ma["fingerprint"] == json.loads((tmp_path / "b" / "mixture.json").read_text())["fingerprint"]
    train = read_split(tmp_path / "a", "train").to_pylist()
    assert {r["template_type"] for r in train} == {"zs_opt", "zs_noopt", "fs_opt", "fs_noopt"}
    assert not any(r["example_id"] in r["few_shot_ids"] for r in train)  # over the whole build
    assert {r["task_source"] for r in train} >= {"flan2021", "cot", "niv2"}
    assert all(r["targets"] in r["options"] for r in train if r["options"])
