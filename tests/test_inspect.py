"""Inspection commands (stats, show, diff, card), the progress display and the CLI wiring."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from flanbuild.cli.main import main, make_parser
from flanbuild.pipeline.progress import Progress
from conftest import read_split, toy_build


def toy(registry, out: Path, seed: int = 0, **mix) -> Path:
    return toy_build(registry, out, seed=seed, mix=mix).out


def split_rows(out: Path, split: str) -> list[dict]:
    return read_split(out, split).to_pylist()


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- stats ----------------------------------------------------------------------------------------

def test_stats_json_matches_the_data(toy_registry, tmp_path, capsys):
    out = toy(toy_registry, tmp_path / "out")
    code, stdout, _ = cli(capsys, "stats", out, "--json")
    assert code == 0
    data = json.loads(stdout)
    rows = split_rows(out, "train")
    for task, entry in data["tasks"].items():
        if entry["split"] != "train":
            continue
        mine = [r for r in rows if r["task_name"] == task]
        assert entry["rows"] == len(mine)
        assert entry["template_types"] == {t: sum(r["template_type"] == t for r in mine)
                                           for t in sorted({r["template_type"] for r in mine})}
        assert entry["share"] == pytest.approx(len(mine) / len(rows), abs=1e-6)
    assert data["clusters"]["toy_sent"]["rows"] == sum(r["cluster"] == "toy_sent" for r in rows)
    assert data["lengths"]["train/inputs"]["chars"]["max"] == max(len(r["inputs"]) for r in rows)


def test_stats_table_and_plot(toy_registry, tmp_path, capsys):
    out = toy(toy_registry, tmp_path / "out")
    code, stdout, err = cli(capsys, "stats", out, "--plot-dir", tmp_path / "pics")
    assert code == 0
    for needle in ("Clusters", "Tasks", "Lengths", "toy_sent", "sent_a", "zs_opt", "train/inputs"):
        assert needle in stdout, needle
    assert (tmp_path / "pics" / "composition.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "pics" / "lengths.png").is_file() and "wrote" in err
    code, stdout, _ = cli(capsys, "stats", out, "--manifest-only")
    assert code == 0 and "Lengths" not in stdout and "sent_a" in stdout


# -- show -----------------------------------------------------------------------------------------

def test_show_filters(toy_registry, tmp_path, capsys):
    out = toy(toy_registry, tmp_path / "out")
    rows = split_rows(out, "train")
    code, stdout, _ = cli(capsys, "show", out, "--task", "sent_a", "--template", "3", "-n", "2", "--json")
    assert code == 0
    got = [json.loads(line) for line in stdout.splitlines()]
    want = [(i, r) for i, r in enumerate(rows) if r["task_name"] == "sent_a" and r["template_id"] == 3][:2]
    assert [(g["position"], g["inputs"]) for g in got] == [(i, r["inputs"]) for i, r in want]

    code, stdout, _ = cli(capsys, "show", out, "--cluster", "toy_gen", "--offset", "1", "-n", "1")
    first = [r for r in rows if r["cluster"] == "toy_gen"][1]
    assert code == 0 and first["inputs"] in stdout and f">>> {first['targets']}" in stdout
    assert f"=== {first['example_id']}" in stdout

    code, stdout, _ = cli(capsys, "show", out, "--split", "eval", "--task", "nli_a", "-n", "4")
    assert code == 0 and stdout.count("=== nli_a/") == 4 and "options: no | yes" in stdout


@pytest.mark.parametrize("args, message", [
    (["--task", "nope"], "task 'nope' is not in this mixture"),
    (["--task", "nli_a"], "task 'nli_a' is in the eval split, not train (use --split eval)"),
    (["--task", "sent_a", "--template", "99"], "task 'sent_a' has no rows from template 99"),
    (["--cluster", "toy_nli"], "cluster 'toy_nli' has no train rows"),
])
def test_show_errors_are_one_line(toy_registry, tmp_path, capsys, args, message):
    out = toy(toy_registry, tmp_path / "out")
    code, stdout, err = cli(capsys, "show", out, *args)
    assert code == 2 and stdout == ""
    assert err.startswith("flanbuild: error: ") and message in err and err.count("\n") == 1


def test_not_a_build(tmp_path, capsys):
    code, _, err = cli(capsys, "stats", tmp_path)
    assert code == 2 and "is not a flanbuild output (no mixture.json)" in err


# -- diff -----------------------------------------------------------------------------------------

def test_diff_identical_and_changed(toy_registry, toy_catalog, tmp_path, capsys):
    a = toy(toy_registry, tmp_path / "a", seed=1)
    b = toy(toy_registry, tmp_path / "b", seed=1)
    code, stdout, _ = cli(capsys, "diff", a, b, "--data")
    assert code == 0 and "identical" in stdout and "same rows in the same order" in stdout

    c = toy(toy_registry, tmp_path / "c", seed=2, task_weights={"sent_a": 2.0})
    code, stdout, _ = cli(capsys, "diff", a, c, "--data", "--json")
    assert code == 1
    d = json.loads(stdout)
    assert d["config"]["seed"] == [1, 2] and d["config"]["task_weights"] == [{}, {"sent_a": 2.0}]
    assert "sent_a" in d["tasks_changed"] and d["tasks_changed"]["sent_a"]["rows"][0] < d["tasks_changed"]["sent_a"]["rows"][1]
    rows_a, rows_c = split_rows(a, "train"), split_rows(c, "train")
    e = d["rows"]["train/sent_a"]
    assert e["same"] + e["only_a"] == sum(r["task_name"] == "sent_a" for r in rows_a)
    assert e["same"] + e["only_b"] == sum(r["task_name"] == "sent_a" for r in rows_c)
    assert e["other_template"] > 0 and e["rerendered"] == 0  # a new seed draws other templates

    # an edited template and a task dropped between builds (same seed)
    (toy_catalog / "data" / "gen_a_train.jsonl").unlink()
    tpl = toy_catalog / "templates" / "sent_a.yaml"
    tpl.write_text(tpl.read_text().replace("Label this:", "Please label this:"))
    from flanbuild.catalog.registry import Registry

    registry = Registry()
    registry.load_catalog(toy_catalog)
    g = toy(registry, tmp_path / "g", seed=1)
    code, stdout, _ = cli(capsys, "diff", a, g, "--data")
    assert code == 1 and "tasks only in A (1): gen_a" in stdout and "skipped only in B (1): gen_a" in stdout
    n_tpl2 = sum(r["task_name"] == "sent_a" and r["template_id"] == 2 for r in rows_a)
    assert f"train/sent_a: {300 - n_tpl2:,} same, {n_tpl2:,} only in A, {n_tpl2:,} only in B ({n_tpl2:,} same " \
           "example and template, rendered differently)" in stdout
    assert "train/sent_b" not in stdout  # unchanged tasks are not listed


# -- card command ---------------------------------------------------------------------------------

def test_card_command_rewrites_the_card(toy_registry, toy_catalog, tmp_path, capsys):
    out = toy(toy_registry, tmp_path / "out")
    (out / "README.md").unlink()
    code, _, err = cli(capsys, "card", out, "--catalog", toy_catalog)
    assert code == 0 and "wrote" in err
    assert (out / "README.md").read_text().startswith("---\n") and "\nconfigs:\n" in (out / "README.md").read_text() and (out / "composition.png").is_file()


# -- progress -------------------------------------------------------------------------------------

def test_progress_plain_lines():
    buf = io.StringIO()
    p = Progress("auto", stream=buf)  # StringIO is not a TTY: plain
    assert p.mode == "plain"
    p.skip("x", "not found " * 40)
    p.skip("y", "not found " * 40)
    p.skip("z", "manual download")
    p.start(3)
    p.task_done("a", "train", 1000, 0.5)
    p.task_done("b", "eval", 10, 0.1, dropped=2)
    p("warning: no eval data")
    p.task_done("c", "train", 5, 0.0)
    p.stage("writing the splits", total=1000)
    for _ in range(10):
        p.stage_advance(100)
    p.stage("writing the dataset card")
    p.finish("wrote out")
    lines = buf.getvalue().splitlines()
    # skips grouped by reason, cut at a word, most common first
    assert lines[0].startswith("skipped 2 task(s) (x, y): not found") and lines[0].endswith("…")
    assert lines[0][:-1].split()[-1] in ("not", "found")  # cut between words, not inside one
    assert lines[1] == "skipped 1 task(s) (z): manual download"
    assert lines[2].startswith("(each task's reason")
    assert lines[3].startswith("[1/3] train a: 1000 rows in 0.5s (2,000 rows/s, ETA ")
    assert lines[4].startswith("[2/3] eval  b: 10 rows") and "dropped" not in lines[4]
    assert lines[5] == "warning: no eval data"
    assert lines[6].startswith("[3/3] train c: 5 rows") and "ETA" not in lines[6]
    assert lines[7] == "writing the splits ..."
    assert [ln.split(" (")[0] for ln in lines[8:11]] == ["writing the splits: 300/1,000", "writing the splits: 500/1,000",
                                                         "writing the splits: 800/1,000"] and "ETA" in lines[8]
    assert lines[11].startswith("writing the splits: done in ") and lines[12] == "writing the dataset card ..."
    assert lines[13].startswith("writing the dataset card: done in ") and lines[14] == "wrote out"
    assert len(lines) == 15


def test_progress_verbose_quiet_and_eta():
    buf = io.StringIO()
    p = Progress("plain", verbose=True, stream=buf)
    p.start(2, total_rows=100)
    p.skip("x", "a long reason " * 20)
    p.task_done("b", "eval", 25, 0.1, dropped=2)
    assert "a long reason " * 19 in buf.getvalue() and "(2 dropped)" in buf.getvalue()
    eta = p.eta()
    assert eta is not None and eta >= 0  # 25 of 100 rows done
    p.advance("c", 30)  # a shard of a task that is still running
    assert p.done_rows == 55 and "c" not in buf.getvalue()
    p.task_done("c", "train", 75)  # seconds unknown: time since start
    assert p.done_rows == 100 and p.eta() == 0 and "[2/2] train c: 75 rows at " in buf.getvalue()
    assert "rows/s overall" in buf.getvalue()
    quiet = io.StringIO()
    q = Progress("quiet", stream=quiet)
    q.start(1)
    q.skip("x", "r")
    q.task_done("a", "train", 1, 0.1)
    q("hello")
    q("warning: shown even when quiet")
    q.finish("done")
    assert quiet.getvalue() == "warning: shown even when quiet\n"
    args = argparse.Namespace(quiet=True, verbose=True)
    assert Progress.from_args(args).mode == "quiet"
    with pytest.raises(ValueError):
        Progress("loud")


def test_progress_rich_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    buf = Tty()
    p = Progress("auto", stream=buf)
    assert p.mode == "rich"
    p.start(2, total_rows=20)
    p.skip("gone", "no data")
    p.task_done("a", "train", 10, 0.01)
    p.task_done("b", "eval", 10, 0.01)
    p.finish("wrote out")
    text = buf.getvalue()
    assert "skipped 1 task(s) (gone): no data" in text and "wrote out" in text


# -- CLI wiring and laziness ----------------------------------------------------------------------

def test_every_command_is_registered_with_a_handler_and_the_common_options():
    parser = make_parser()
    for argv in (["stats", "o"], ["show", "o", "-n", "2"], ["diff", "a", "b"], ["export", "o", "--format", "chat"],
                 ["push", "o", "me/x", "--private"], ["card", "o"], ["tasks"], ["verify", "o"], ["lint"]):
        args = parser.parse_args(argv + ["--catalog", "c", "--quiet", "--debug"])
        assert callable(args.func) and args.catalog == ["c"] and args.quiet and args.debug
    args = parser.parse_args(["export", "o", "--format", "prompt-completion", "--separator", "\\n\\nA: "])
    assert args.separator == "\n\nA: " and args.dest is None
    with pytest.raises(SystemExit):
        parser.parse_args(["export", "o", "--format", "sharegpt"])


def test_cli_parser_import_is_light():
    code = ("import sys, flanbuild.cli.main as m; m.make_parser(); "
            "print(sorted(m for m in ('rich', 'matplotlib', 'datasets', 'trl', 'huggingface_hub', 'torch', 'pyarrow', "
            "'transformers', 'jinja2', 'numpy') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
