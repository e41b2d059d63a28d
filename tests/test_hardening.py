"""Issue 8 guarantees: hostile templates, bad input, crash safety, verify."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flanbuild.cli.main import main
from flanbuild.errors import FlanbuildError
from flanbuild.pipeline.examples import Example
from flanbuild.pipeline.render import render_example
from flanbuild.catalog.tasks import Source, Task
from flanbuild.catalog.templates import Template
from conftest import REPO, write, write_jsonl

TASKS = "nli_a,nli_b,para_a,sent_a,sent_b,gen_a"


# -- hostile templates ------------------------------------------------------------------------------

PAYLOADS = {
    "class": "{{ text.__class__ }}",
    "mro subclasses": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "globals": "{{ lipsum.__globals__ }}",
    "builtins": "{{ lipsum.__globals__['__builtins__'] }}",
    "os": "{{ lipsum.__globals__.os.popen('id').read() }}",
    "subprocess": "{{ cycler.__init__.__globals__.os.system('id') }}",
    "open": "{{ lipsum.__globals__['__builtins__']['open']('/etc/passwd').read() }}",
    "config": "{{ config.items() }}",
    "request": "{{ request.application.__globals__ }}",
    "cycler": "{{ cycler.__init__.__globals__ }}",
    "joiner": "{{ joiner.__init__.__globals__ }}",
    "namespace": "{{ namespace.__init__.__globals__ }}",
    "self": "{{ self._TemplateReference__context }}",
    "format string": "{{ '{0.__class__.__base__}'.format(text) }}",
    "format_map": "{{ '{x.__class__}'.format_map({'x': text}) }}",
    "attr filter": "{{ text | attr('__class__') }}",
    "attr chain": "{{ (text | attr('__class__') | attr('__base__')) }}",
    "mutation": "{{ options.append('x') }}",
    "include": "{% include '/etc/passwd' %}",
    "import": "{% import 'os' as os %}",
    "big string": "{{ 'x' * 100000000 }}",
    "big list": "{{ [0] * 100000000 }}",
    "big power": "{{ 7 ** 123456789 }}",
    "big range": "{% for i in range(100000000) %}{% endfor %}",
    "output explosion": "{% for i in range(10000) %}{% for j in range(10000) %}xxxxxxxxxx{% endfor %}{% endfor %}",
}


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_ssti_payloads_are_refused_with_the_template_named(name):
    task = Task(name="victim", cluster="c", source=Source(files={"train": "x"}), fields={"text": "text"},
                type="classification", answer="label", options=("no", "yes"))
    template = Template(42, PAYLOADS[name], "{{answer}}", origin="templates/victim.yaml:7")
    example = Example({"text": "hello", "answer": "yes", "options": ["no", "yes"]}, ["no", "yes"], ["yes"])
    with pytest.raises(FlanbuildError) as e:  # bounded by the sandbox's checks, not by a wall-clock assertion
        render_example(task, template, example, True)
    assert "task victim, template 42" in str(e.value) and "templates/victim.yaml:7" in str(e.value)
    assert "\n" not in str(e.value)


def test_deeply_nested_loops_refused_at_load(tmp_path):
    from flanbuild.catalog.templates import load_templates_file

    body = "{% for a in text %}{% for b in text %}{% for c in text %}x{% endfor %}{% endfor %}{% endfor %}"
    path = write(tmp_path / "t.yaml", f"task: t\ntemplates:\n  - id: 1\n    input: '{body}'\n    target: x\n")
    with pytest.raises(FlanbuildError, match="t.yaml:4: task t, template 1 .*nested deeper than 2"):
        load_templates_file(path)


# -- bad input: one line, non-zero exit, nothing written ----------------------------------------------

def _set(path: Path, old: str, new: str):
    path.write_text(path.read_text().replace(old, new))


def _case(name: str, cat: Path, tmp: Path) -> tuple[list[str], str]:
    """Mutate the toy catalog for one bad input; return (extra CLI args, expected message part)."""
    tasks, tpls, data = cat / "tasks", cat / "templates", cat / "data"
    if name == "malformed yaml":
        (tasks / "sent_a.yaml").write_text("name: sent_a\ncluster: [toy_sent\n")
        return [], "sent_a.yaml:"
    if name == "unknown card key":
        _set(tasks / "sent_a.yaml", "type:", "colour: red\ntype:")
        return [], "unknown card key 'colour'"
    if name == "unknown cluster in card":
        _set(tasks / "sent_a.yaml", "cluster: toy_sent", "cluster: toy_nope")
        return [], "unknown cluster 'toy_nope'"
    if name == "unknown held-out cluster":
        return ["--heldout", "nope"], "unknown held-out cluster 'nope'"
    if name == "missing field in template":
        _set(tpls / "sent_a.yaml", "{{text}}\n      What", "{{txet}}\n      What")
        return [], "unknown field(s) txet"
    if name == "jinja syntax error":
        _set(tpls / "sent_a.yaml", "Label this: {{text}}", "Label this: {{text")
        return [], "Jinja syntax error"
    if name == "empty target":
        _set(tpls / "gen_a.yaml", 'target: "{{answer}}"\n  - id: 2', 'target: ""\n  - id: 2')
        return [], "needs a non-empty 'target'"
    if name == "label outside options":
        write_jsonl(data / "sent_b_train.jsonl", [{"text": "x", "label": 5}])
        return [], "answer 5 on row 0"
    if name == "options missing":
        _set(tasks / "sent_a.yaml", 'options: ["no", "yes"]', "")
        return [], "has no options"
    if name == "duplicate template id":
        _set(tpls / "sent_a.yaml", "- id: 2", "- id: 1")
        return [], "duplicate template id 1"
    if name == "duplicate task name":
        write(tasks / "sent_c.yaml", (tasks / "sent_a.yaml").read_text())
        return [], "must equal the file name"
    if name == "source does not exist":
        (data / "sent_a_train.jsonl").unlink()
        return ["--strict"], "sent_a_train.jsonl does not exist"
    if name == "missing split":
        _set(tasks / "nli_a.yaml", "eval: data/nli_a_eval.jsonl", "")
        _set(tasks / "nli_a.yaml", "train: data/nli_a_train.jsonl, ", "train: data/nli_a_train.jsonl")
        return ["--strict"], "no source split to 'eval'"
    if name == "empty dataset":
        (data / "sent_b_train.jsonl").write_text("")
        return ["--strict"], "sent_b"
    if name == "data dir does not exist":
        return ["--data-dir", str(tmp / "nowhere")], "does not exist"
    if name == "output is a file":
        return ["OUT_IS_FILE"], "exists and is a file"
    if name == "no write permission":
        return ["--out", "/proc/flanbuild-out"], "cannot write to /proc"
    if name == "negative weight":
        return ["--task-weight", "sent_a=-1"], "weight for 'sent_a' must be > 0"
    if name == "zero cluster weight":
        return ["--cluster-weight", "toy_sent=0"], "weight for 'toy_sent' must be > 0"
    if name == "heldout leaves no training data":
        return ["--heldout", "toy_sent", "--heldout", "toy_gen", "--heldout", "toy_nli"], "no training data"
    if name == "unknown mixture":
        return ["--mixture", "flan1999"], "unknown mixture 'flan1999'"
    if name == "few-shot k larger than split":
        write(tmp / "fs.yaml", "name: fs\nsubmixtures: [{name: m, task_cap: 0}]\nprompt: {few_shot: 1.0, k: [500]}\n")
        return ["--mixture", str(tmp / "fs.yaml")], "few-shot k=500 needs at least 501 training rows"
    if name == "non-utf8 file":
        (tasks / "sent_a.yaml").write_bytes("name: sent_a\ndescription: caf\xe9\n".encode("latin-1"))
        return [], "not UTF-8"
    if name == "unknown template key":
        _set(tpls / "sent_a.yaml", "  - id: 2", "  - id: 2\n    colour: red")
        return [], "unknown template key"
    if name == "unknown metric":
        _set(tasks / "sent_a.yaml", "type:", "metric: vibes\ntype:")
        return [], "unknown metric 'vibes'"
    if name == "path escapes catalog":
        _set(tasks / "sent_a.yaml", "data/sent_a_train.jsonl", "../../../etc/passwd")
        return [], "must be a relative path inside the catalog"
    if name == "catalog does not exist":
        return ["--catalog", str(tmp / "nowhere")], "catalog directory"
    if name == "templates for unknown task":
        write(tpls / "ghost.yaml", "task: ghost\ntemplates:\n  - {id: 1, input: a, target: b}\n")
        return [], "templates for unknown task 'ghost'"
    if name == "bad weight syntax":
        return ["--task-weight", "sent_a"], "expected NAME=WEIGHT"
    if name == "unknown cluster filter":
        return ["--clusters", "toy_zzz"], "unknown cluster 'toy_zzz'"
    if name == "bad mixture file":
        write(tmp / "bad.yaml", "name: bad\nsubmixtures: [{name: m, colour: red}]\n")
        return ["--mixture", str(tmp / "bad.yaml")], "unknown submixture key"
    if name == "inverted template shows options":
        _set(tpls / "sent_a.yaml", "inverted: true\n    input: \"Write", "inverted: true\n    input: \"{{options_block}} Write")
        return [], "cannot show options_block"
    if name == "hostile template":
        _set(tpls / "sent_a.yaml", "Label this: {{text}}", "Label this: {{text.__class__.__mro__}}")
        return [], "refused by the sandbox"
    if name == "niv2 dir without tasks":
        (tmp / "emptyniv2").mkdir()
        return ["--niv2-dir", str(tmp / "emptyniv2")], "no NIv2 task files"
    raise AssertionError(name)


CASES = ["malformed yaml", "unknown card key", "unknown cluster in card", "unknown held-out cluster",
         "missing field in template", "jinja syntax error", "empty target", "label outside options",
         "options missing", "duplicate template id", "duplicate task name", "source does not exist",
         "missing split", "empty dataset", "data dir does not exist", "output is a file", "no write permission",
         "negative weight", "zero cluster weight", "heldout leaves no training data", "unknown mixture",
         "few-shot k larger than split", "non-utf8 file", "unknown template key", "unknown metric",
         "path escapes catalog", "catalog does not exist", "templates for unknown task", "bad weight syntax",
         "unknown cluster filter", "bad mixture file", "inverted template shows options", "hostile template",
         "niv2 dir without tasks"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gives_one_line_and_leaves_nothing(case, toy_catalog, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FLANBUILD_DATA_DIR", "")
    out = tmp_path / "out"
    extra, expected = _case(case, toy_catalog, tmp_path)
    if extra == ["OUT_IS_FILE"]:
        out.write_text("a file")
        extra = []
    if "--out" in extra:
        out = Path(extra[extra.index("--out") + 1])
        args = ["build", "--catalog", str(toy_catalog), "--tasks", TASKS, "--heldout", "toy_nli", *extra]
    else:
        args = ["build", "--out", str(out), "--catalog", str(toy_catalog), "--tasks", TASKS, *extra]
        if "--heldout" not in extra:
            args += ["--heldout", "toy_nli"]
    with pytest.raises(SystemExit) if case == "bad weight syntax" else _nullcontext() as raised:
        code = main(args + ["-q", "--workers", "1"])
    if case == "bad weight syntax":
        code = raised.value.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("flanbuild: error: "), err
    assert expected in lines[0], lines[0]
    assert "Traceback" not in err
    if case == "output is a file":
        assert out.read_text() == "a file"
    elif case != "no write permission":
        assert not out.exists()
    assert not list(tmp_path.glob(".out.partial-*"))


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


# -- verify --------------------------------------------------------------------------------------------

def test_verify_detects_tampering(toy_catalog, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["build", "--out", str(out), "--catalog", str(toy_catalog), "--tasks", TASKS, "--heldout", "toy_nli",
                 "-q", "--workers", "1"]) == 0
    assert main(["verify", str(out)]) == 0
    data = next((out / "data").glob("train-*.parquet"))
    blob = bytearray(data.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    data.write_bytes(bytes(blob))
    capsys.readouterr()
    assert main(["verify", str(out)]) == 1
    assert "content differs from mixture.json" in capsys.readouterr().out
    assert main(["verify", str(tmp_path)]) == 2  # not an output at all


# -- crash safety --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_sigkill_at_random_moments_never_breaks_the_output(toy_catalog, tmp_path):
    write_jsonl(toy_catalog / "data" / "sent_a_train.jsonl",
                [{"text": f"sentence {i} " + "word " * 30, "label": i % 2} for i in range(30000)])
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FLANBUILD_DATA_DIR": "", "FLANBUILD_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "flanbuild", "build", "--out", str(out), "--catalog", str(toy_catalog), "--tasks", TASKS,
           "--heldout", "toy_nli", "--task-cap", "0", "--rate-cap", "0", "--workers", "1", "-q"]
    reference = tmp_path / "reference"
    ref_cmd = [a if a != str(out) else str(reference) for a in cmd] + ["--no-cache"]
    t0 = time.perf_counter()
    assert subprocess.run(ref_cmd, env=env, capture_output=True).returncode == 0
    full = time.perf_counter() - t0
    expected = {p.name: p.read_bytes() for p in (reference / "data").iterdir()}
    rng = random.Random(8)
    previous = None
    deadline = time.monotonic() + 60
    kills = 0
    while time.monotonic() < deadline and kills < 12:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.05, full * 1.1))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        visible = [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")]
        assert not [v for v in visible if v.startswith("out") and v != "out"]
        if out.exists():  # whatever is at OUT is complete and verified
            assert main(["verify", str(out)]) == 0
            if previous is not None:
                now = {p.name: p.read_bytes() for p in (out / "data").iterdir()}
                assert now == previous or now == expected
            previous = {p.name: p.read_bytes() for p in (out / "data").iterdir()}
    assert kills >= 3
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0  # the next build, with the cache
    assert {p.name: p.read_bytes() for p in (out / "data").iterdir()} == expected
    assert not list(tmp_path.glob(".out.partial-*"))
