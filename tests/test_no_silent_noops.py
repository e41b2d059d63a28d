"""No silent no-ops: misspelt names, missing directories, cut train sizes and empty splits are all told."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO
from flanbuild.builder import BuildConfig, build
from flanbuild.catalog.recipes import Recipe, Submixture
from flanbuild.errors import FlanbuildError
from flanbuild.pipeline.mixer import MixConfig

TOY_TASKS = "nli_a,nli_b,para_a,sent_a,sent_b,gen_a"


def run(*args, cwd=REPO):
    env = {k: v for k, v in os.environ.items() if k != "FLANBUILD_DATA_DIR"}
    env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run([sys.executable, "-m", "flanbuild", *args], cwd=cwd, capture_output=True, text=True, env=env)


def toy(toy_catalog, out, *args):
    return run("build", "--out", str(out), "--catalog", str(toy_catalog), "--tasks", TOY_TASKS, *args)


def one_error_line(r) -> str:
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    return lines[0]


@pytest.mark.parametrize("args, expected", [
    (["--task-weight", "sent_aa=3"], "unknown task 'sent_aa' in --task-weight (did you mean 'sent_a'?)"),
    (["--cluster-weight", "toy_sentt=2"], "unknown cluster 'toy_sentt' in --cluster-weight (did you mean 'toy_sent'?)"),
    (["--heldout", "toy_nlli"], "unknown held-out cluster 'toy_nlli' (did you mean 'toy_nli'?)"),
    (["--clusters", "toy_gen,toy_sentt"], "unknown cluster 'toy_sentt' (did you mean 'toy_sent'?)"),
])
def test_misspelt_names_are_errors_with_the_closest_match(toy_catalog, tmp_path, args, expected):
    r = toy(toy_catalog, tmp_path / "o", "--heldout", "toy_nli", *args) if "--heldout" not in args else \
        toy(toy_catalog, tmp_path / "o", *args)
    assert expected in one_error_line(r)
    assert not (tmp_path / "o").exists()


def test_misspelt_task_in_tasks_is_an_error_with_the_closest_match(toy_catalog, tmp_path):
    r = run("build", "--out", str(tmp_path / "o"), "--catalog", str(toy_catalog), "--tasks", "nli_a,sent_bb")
    assert "unknown task 'sent_bb' (did you mean 'sent_b'?)" in one_error_line(r)


def test_unknown_names_in_a_recipe_are_errors(toy_registry, tmp_path):
    recipe = Recipe(name="mine", submixtures=(Submixture("main", tasks=("sent_a", "sent_c")),))
    with pytest.raises(FlanbuildError, match=r"unknown task 'sent_c' in submixture main of mixture mine"):
        build(BuildConfig(out=tmp_path / "o", recipe=recipe, mix=MixConfig(heldout=("toy_nli",))), registry=toy_registry)


@pytest.mark.parametrize("command", [["build", "--out", "OUT"], ["lint"], ["render", "glue_rte"]])
def test_missing_data_dir_is_an_error(tmp_path, command):
    args = [str(tmp_path / "o") if a == "OUT" else a for a in command]
    r = run(*args, "--data-dir", str(tmp_path / "nonexistent"))
    assert f"directory {tmp_path / 'nonexistent'} does not exist" in one_error_line(r)


def test_a_train_size_the_epoch_limit_cuts_is_reported(toy_catalog, tmp_path):
    r = toy(toy_catalog, tmp_path / "o", "--heldout", "toy_nli", "--train-size", "100000", "--max-epochs", "2")
    assert r.returncode == 0, r.stderr
    notes = [line for line in (r.stdout + r.stderr).splitlines() if "--train-size" in line]
    m = json.loads((tmp_path / "o" / "mixture.json").read_text())
    got = m["counts"]["train"]
    assert got < 100_000 and len(notes) == 1
    assert f"--train-size 100,000 asked, the train split gets {got:,} rows: --max-epochs 2 limits" in notes[0]
    quiet = toy(toy_catalog, tmp_path / "o2", "--heldout", "toy_nli", "--train-size", "100")
    assert quiet.returncode == 0 and "--train-size" not in quiet.stdout + quiet.stderr  # not cut: nothing to say


def test_a_weight_that_changes_nothing_is_reported(toy_catalog, tmp_path):
    r = toy(toy_catalog, tmp_path / "o", "--heldout", "toy_nli", "--task-weight", "nli_a=3")
    assert r.returncode == 0, r.stderr
    assert "note: --task-weight nli_a=3 changes nothing: nli_a is held out" in r.stdout + r.stderr


def test_empty_eval_split_is_an_error_unless_allowed(toy_catalog, tmp_path):
    datasets = pytest.importorskip("datasets")
    # toy_gen is held out, but only sentiment tasks are built: no eval rows
    args = ["--heldout", "toy_gen", "--tasks", "sent_a,sent_b"]
    r = run("build", "--out", str(tmp_path / "o"), "--catalog", str(toy_catalog), *args)
    line = one_error_line(r)
    assert "no eval data" in line and "--allow-empty-split" in line
    assert not (tmp_path / "o").exists()
    r = run("build", "--out", str(tmp_path / "o"), "--catalog", str(toy_catalog), *args, "--allow-empty-split", "-q")
    assert r.returncode == 0, r.stderr
    card = (tmp_path / "o" / "README.md").read_text().split("---")[1]
    assert "split: train" in card and "split: eval" not in card
    ds = datasets.load_dataset(str(tmp_path / "o"))
    assert list(ds) == ["train"] and ds["train"].num_rows > 0


def test_eval_only_mixture_when_allowed(toy_registry, tmp_path):
    datasets = pytest.importorskip("datasets")
    held = MixConfig(heldout=("toy_nli", "toy_sent", "toy_gen"))
    with pytest.raises(FlanbuildError, match="no training data"):
        build(BuildConfig(out=tmp_path / "o", mix=held), registry=toy_registry)
    result = build(BuildConfig(out=tmp_path / "o", mix=held, allow_empty_split=True), registry=toy_registry)
    assert result.manifest["counts"]["train"] == 0 and result.manifest["counts"]["eval"] > 0
    ds = datasets.load_dataset(str(tmp_path / "o"))
    assert list(ds) == ["eval"]


def test_a_task_asked_for_that_the_recipe_excludes_is_an_error(toy_registry, tmp_path):
    """--tasks naming a task no submixture selects (e.g. the second copy of a dataset) is not silently dropped."""
    recipe = Recipe("r", submixtures=(Submixture("m", exclude_tasks=("sent_b",)),))
    config = BuildConfig(out=tmp_path / "o", recipe=recipe, mix=MixConfig(heldout=("toy_nli",)),
                         tasks=("nli_a", "sent_a", "sent_b"))
    with pytest.raises(FlanbuildError, match="task sent_b is not selected by any submixture of mixture r"):
        build(config, registry=toy_registry)
    assert not (tmp_path / "o").exists()
