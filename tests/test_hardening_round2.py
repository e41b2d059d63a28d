"""Issue 12 (hardening, round 2): untrusted catalogs, templates, recipes, data and command lines.

Table-driven: each bad-input case mutates a tiny catalog (or the command line), then runs the real CLI
(``python -m flanbuild``) in a subprocess under resource limits set here (address space and CPU time,
never wall-clock assertions), and checks: non-zero exit, exactly one stderr line starting with
``flanbuild: error:`` that names the file/line/task/template/field, no traceback, nothing new written,
and the previous output intact (byte for byte, and it still verifies).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import REPO, write, write_jsonl
from flanbuild.pipeline import parts

MEMORY_LIMIT = 2 << 30  # bytes of address space per CLI run
CPU_LIMIT = 20  # seconds of CPU per CLI run
TASKS = "r2_tr,r2_ev"


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_LIMIT, CPU_LIMIT))


def run_cli(args: list[str], tmp: Path, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "FLANBUILD_DATA_DIR": "", "FLANBUILD_RENDER_SECONDS": "1",
                "FLANBUILD_CACHE": str(tmp / "cache"), "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "flanbuild", *args], capture_output=True, text=True,
                          preexec_fn=_limits, env=full_env, cwd=kwargs.pop("cwd", tmp), timeout=300, **kwargs)


# -- a tiny catalog -----------------------------------------------------------------------------------

CARD = """\
name: {name}
cluster: {cluster}
source:
  files: {{train: data/{name}.jsonl, eval: data/{name}.jsonl}}
fields:
  text: text
type: classification
options: ["no", "yes"]
answer: label
"""
TEMPLATES = """\
task: {name}
templates:
  - id: 1
    input: "{{{{text}}}} {{{{options_block}}}}"
    target: "{{{{answer}}}}"
  - id: 2
    input: "Label: {{{{text}}}}"
    target: "{{{{answer}}}}"
"""


def make_catalog(root: Path) -> Path:
    write(root / "tasks" / "clusters.yaml", "clusters:\n  r2_train: {}\n  r2_eval: {}\n")
    for name, cluster in (("r2_tr", "r2_train"), ("r2_ev", "r2_eval")):
        write(root / "tasks" / f"{name}.yaml", CARD.format(name=name, cluster=cluster))
        write(root / "templates" / f"{name}.yaml", TEMPLATES.format(name=name))
        write_jsonl(root / "data" / f"{name}.jsonl", [{"text": f"{name} sentence {i}", "label": i % 2} for i in range(20)])
    return root


def build_args(cat: Path, out: Path, *extra: str) -> list[str]:
    return ["build", "--out", str(out), "--catalog", str(cat), "--tasks", TASKS, "--heldout", "r2_eval",
            "--workers", "1", "-q", *extra]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """A good previous output, built once: each case starts from a copy of it."""
    tmp = tmp_path_factory.mktemp("r2ref")
    cat = make_catalog(tmp / "cat")
    out = tmp / "out"
    proc = run_cli(build_args(cat, out, "--no-cache"), tmp)
    assert proc.returncode == 0, proc.stderr
    return out


def snapshot(out: Path) -> dict[str, str]:
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file()}


# -- the cases: name -> (setup, expected parts of the error line) ----------------------------------------
# A setup gets (catalog dir, tmp dir) and returns the CLI arguments (None: the default build).

def _set(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new))


def _template(body: str, target: str = "{{answer}}"):
    """Replace template 2 of r2_tr (the train task) with a hostile input."""
    def setup(cat: Path, tmp: Path):
        doc = json.dumps(body)
        _set(cat / "templates" / "r2_tr.yaml", '"Label: {{text}}"', doc)
        if target != "{{answer}}":
            _set(cat / "templates" / "r2_tr.yaml", '    input: ' + doc + '\n    target: "{{answer}}"',
                 '    input: ' + doc + '\n    target: ' + json.dumps(target))
        return None
    return setup


def _card(old: str, new: str, task: str = "r2_tr"):
    def setup(cat: Path, tmp: Path):
        _set(cat / "tasks" / f"{task}.yaml", old, new)
        return None
    return setup


def _recipe(body: str):
    def setup(cat: Path, tmp: Path):
        write(tmp / "recipe.yaml", body)
        return ["--mixture", str(tmp / "recipe.yaml")]
    return setup


def _args(*extra: str):
    return lambda cat, tmp: list(extra)


def _raw(*argv: str):
    """A whole command line (not a build of the catalog)."""
    return lambda cat, tmp: ["RAW", *[a.replace("CAT", str(cat)) for a in argv]]


def _hub_source(hub: str, split: str = "train", config: str = "default"):
    def setup(cat: Path, tmp: Path):
        (tmp / "elsewhere" / "default").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"text": ["stolen"], "label": [0]}), tmp / "elsewhere" / "default" / "train.parquet")
        _set(cat / "tasks" / "r2_tr.yaml", "  files: {train: data/r2_tr.jsonl, eval: data/r2_tr.jsonl}",
             f"  hub: {json.dumps(hub)}\n  config: {json.dumps(config)}\n  splits: {{train: {json.dumps(split)}}}")
        (tmp / "mirror").mkdir(exist_ok=True)
        return ["--data-dir", str(tmp / "mirror")]
    return setup


def _fifo_card(cat: Path, tmp: Path):
    (cat / "tasks" / "r2_tr.yaml").unlink()
    os.mkfifo(cat / "tasks" / "r2_tr.yaml")


def _devzero_card(cat: Path, tmp: Path):
    (cat / "tasks" / "r2_tr.yaml").unlink()
    os.symlink("/dev/zero", cat / "tasks" / "r2_tr.yaml")


def _fifo_inside(cat: Path, tmp: Path):
    os.mkfifo(cat / "data" / "pipe")
    (cat / "tasks" / "r2_tr.yaml").unlink()
    os.symlink(cat / "data" / "pipe", cat / "tasks" / "r2_tr.yaml")


def _outside_symlink(cat: Path, tmp: Path):
    (tmp / "outside").mkdir()
    shutil.move(cat / "tasks" / "r2_tr.yaml", tmp / "outside" / "r2_tr.yaml")
    os.symlink(tmp / "outside" / "r2_tr.yaml", cat / "tasks" / "r2_tr.yaml")


def _newline_name(cat: Path, tmp: Path):
    write(cat / "tasks" / "bad\nname.yaml", CARD.format(name="r2_tr", cluster="r2_train"))


def _huge_card(cat: Path, tmp: Path):
    _set(cat / "tasks" / "r2_tr.yaml", "type:", f"description: {'x' * (5 << 20)}\ntype:")


def _alias_bomb(where: str):
    bomb = "[&a [x,x,x,x,x,x,x,x,x], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a], &c [*b,*b,*b,*b,*b,*b,*b,*b,*b], " \
           "&d [*c,*c,*c,*c,*c,*c,*c,*c,*c], &e [*d,*d,*d,*d,*d,*d,*d,*d,*d], [*e,*e,*e,*e,*e,*e,*e,*e,*e]]"

    def setup(cat: Path, tmp: Path):
        if where == "recipe":
            write(tmp / "recipe.yaml", f"name: r\ndescription: {bomb}\nsubmixtures: [{{name: m}}]\n")
            return ["--mixture", str(tmp / "recipe.yaml")]
        if where == "template":
            _set(cat / "templates" / "r2_tr.yaml", "task: r2_tr", f"task: r2_tr\nnotes: {bomb}")
            return None
        _set(cat / "tasks" / "r2_tr.yaml", "type:", f"examples: {bomb}\ntype:")
        return None
    return setup


def _override_builtin_cluster(cat: Path, tmp: Path):
    write(cat / "tasks" / "clusters.yaml", "clusters:\n  r2_train: {}\n  r2_eval: {}\n  nli: {title: mine}\n")


def _override_builtin_templates(cat: Path, tmp: Path):
    write(cat / "templates" / "anli_r1.yaml", "task: anli_r1\ntemplates:\n  - {id: 1, input: '{{premise}}', target: '{{answer}}'}\n")


def _parquet_source(table: pa.Table):
    def setup(cat: Path, tmp: Path):
        pq.write_table(table, cat / "data" / "r2_tr.parquet")
        _set(cat / "tasks" / "r2_tr.yaml", "data/r2_tr.jsonl, eval: data/r2_tr.jsonl",
             "data/r2_tr.parquet, eval: data/r2_tr.parquet")
    return setup


def _bad_utf8_parquet(cat: Path, tmp: Path):
    bad = pa.Array.from_buffers(pa.string(), 1, [None, pa.py_buffer(b"\x00\x00\x00\x00\x02\x00\x00\x00"),
                                                 pa.py_buffer(b"\xff\xfe")])
    _parquet_source(pa.table({"text": bad, "label": pa.array([0])}))(cat, tmp)


def _hf_metadata(features):
    def setup(cat: Path, tmp: Path):
        meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
        table = pa.table({"text": ["a", "b"], "label": [0, 1]}).replace_schema_metadata(meta)
        _parquet_source(table)(cat, tmp)
        _card('options: ["no", "yes"]\n', "")(cat, tmp)
    return setup


def _bad_utf8_jsonl(cat: Path, tmp: Path):
    (cat / "data" / "r2_tr.jsonl").write_bytes(b'{"text": "caf\xe9", "label": 0}\n')


def _csv_duplicate_columns(cat: Path, tmp: Path):
    (cat / "data" / "r2_tr.csv").write_text("text,label,text\na,0,b\nc,1,d\n")
    _set(cat / "tasks" / "r2_tr.yaml", "data/r2_tr.jsonl, eval: data/r2_tr.jsonl", "data/r2_tr.csv, eval: data/r2_tr.csv")


def _null_text(cat: Path, tmp: Path):
    write_jsonl(cat / "data" / "r2_tr.jsonl", [{"text": "fine", "label": 0}, {"text": None, "label": 1}])


def _out_with(files: dict[str, str], fresh: bool = False):
    """OUT is a copy of the previous output plus ``files`` (or, with fresh, a directory holding only them)."""
    def setup(cat: Path, tmp: Path):
        return ["OUT", files, fresh]
    return setup


DEEP = "(" * 400 + "text" + ")" * 400
CASES = {
    # 1. paths from untrusted input
    "hub id with ..": (_hub_source("../elsewhere"), ["r2_tr.yaml:", "source.hub must be a Hugging Face Hub id"]),
    "absolute hub id": (_hub_source("/etc"), ["r2_tr.yaml:", "source.hub"]),
    "hub id with three parts": (_hub_source("a/b/c"), ["source.hub"]),
    "split with ../": (_hub_source("elsewhere", split="../../x"), ["source.splits.train must be a plain name"]),
    "config with /": (_hub_source("elsewhere", config="../x"), ["source.config must be a plain name"]),
    "source file outside catalog": (_card("data/r2_tr.jsonl, eval", "../../../etc/passwd, eval"),
                                    ["must be a relative path inside the catalog"]),
    # 11. card field types
    "description is a mapping": (_card("type:", "description: {a: b}\ntype:"), ["r2_tr.yaml:", "'description' must be a string"]),
    "config is a list": (_card("  files:", "  config: [a]\n  files:"), ["source.config must be a string"]),
    "split is a list": (_card("  files: {train: data/r2_tr.jsonl, eval: data/r2_tr.jsonl}",
                              "  hub: org/name\n  splits: {train: [x]}"), ["source.splits.train must be a string"]),
    "homepage is a number": (_card("type:", "homepage: 5\ntype:"), ["'homepage' must be a string"]),
    "bad nulls policy": (_card("type:", "nulls: sometimes\ntype:"), ["'nulls' must be one of"]),
    # 2. templates and card expressions under the resource policy
    "exponential macro": (_template("{% macro f(n) %}{% if n > 0 %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(40) }}"),
                          ["task r2_tr, template 2", "macro"]),
    "macro recursion": (_template("{% macro f(n) %}{{ f(n+1) }}{% endmacro %}{{ f(0) }}"), ["template 2", "macro"]),
    "set doubling": (_template("{% set a = text * 1000 %}" + "".join(
        f"{{% set {chr(98 + i)} = {chr(97 + i)} ~ {chr(97 + i)} %}}" for i in range(20)) + "{{ u }}"), ["template 2", "'~'"]),
    "list doubling": (_template("{% set a = [text] * 1000 %}" + "".join(
        f"{{% set {chr(98 + i)} = {chr(97 + i)} + {chr(97 + i)} %}}" for i in range(20)) + "{{ u|length }}"), ["'+'"]),
    "join of huge range": (_template("{{ range(10000)|map('string')|join('x' * 1000) }}"), ["template 2", "join"]),
    "str.join of a big list": (_template("{{ ('y' * 100000).join(['a'] * 100) }}"), ["join"]),
    "indent 10**9": (_template("{{ text|indent(1000000000) }}"), ["indent"]),
    "center 10**9": (_template("{{ text|center(1000000000) }}"), ["center"]),
    "str.ljust 10**9": (_template("{{ text.ljust(1000000000) }}"), ["ljust"]),
    "percent width": (_template("{{ '%1000000000s' % text }}"), ["'%'"]),
    "format filter width": (_template("{{ '%1000000000d'|format(1) }}"), ["'%'"]),
    "str.format width": (_template("{{ '{:>1000000000}'.format(text) }}"), ["format width"]),
    "replace chain": (_template("{{ (text * 1000)|replace('e', 'e' * 1000)|replace('e', 'ee') }}"), ["replace"]),
    "pow chain": (_template("{{ ((10 ** 100) ** 100) ** 100 }}"), ["'**'"]),
    "squaring big ints": (_template("{% set a = 10 ** 100 %}{% set b = a ** 50 %}{% set c = b * b %}{% set d = c * c %}{{ d * d }}"),
                          ["integer larger"]),
    "batch 10**9": (_template("{{ [1]|batch(1000000000, 0)|list }}"), ["batch"]),
    "slice 10**9": (_template("{{ [1]|slice(1000000000)|list }}"), ["slice"]),
    "lipsum": (_template("{{ lipsum(1000000) }}"), ["lipsum", "nondeterministic"]),
    "random filter": (_template("{{ options|random }}"), ["random", "nondeterministic"]),
    "tojson of nested lists": (_template("{% set a = [[0] * 1000] * 1000 %}{{ a|tojson }}"), ["tojson"]),
    "string of nested lists": (_template("{% set a = [[0] * 1000] * 1000 %}{{ a|string }}"), ["string"]),
    "sum of lists": (_template("{{ ([[0] * 1000] * 1000)|sum(start=[])|length }}"), ["sum"]),
    "function repr via %": (_template("{{ '%s' % options.index }}"), ["object reprs are refused"]),
    "function rendered": (_template("{{ options.index }}"), ["object reprs are refused"]),
    "unique of functions": (_template("{{ [options.index, options.count]|unique|join }}"), ["object reprs are refused"]),
    "generator rendered": (_template("{{ options|map('upper') }}"), ["object reprs are refused"]),
    "700x700 loop": (_template("{% for i in range(700) %}{% for j in range(700) %}xxxxxxxxxxxxxxxxxxxx{% endfor %}{% endfor %}"),
                     ["output longer"]),
    "empty loops past the time budget": (_template("{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}"),
                                         ["template 2", "CPU budget"]),
    "deeply nested expression": (_template("{{ " + DEEP + " }}"), ["r2_tr.yaml:", "template 2", "nested deeper"]),
    "long filter chain": (_template("{{ text" + "|trim" * 300 + " }}"), ["template 2", "filter chains"]),
    "many nested ifs": (_template("{% if text %}" * 200 + "x" + "{% endif %}" * 200), ["template 2", "nested deeper"]),
    "template id 2**80": (_card("name: r2_tr", "name: r2_tr"), None),  # replaced below (CLI case)
    "card field expression bomb": (_card("  text: text", "  text: \"(text * 1000) * 1000\""),
                                   ["task r2_tr", "field 'text'", "'*'"]),
    "card filter expression join": (_card("answer: label", "answer: label\nfilter: \"range(10000)|map('string')|join('x' * 1000)\""),
                                    ["task r2_tr", "filter", "join"]),
    "card answer nested deeply": (_card("answer: label", f"answer: \"{DEEP.replace('text', 'label')}\""),
                                  ["r2_tr.yaml:", "answer", "nested deeper"]),
    # 3. hostile files
    "alias bomb in a card": (_alias_bomb("card"), ["r2_tr.yaml:", "aliases"]),
    "alias bomb in templates": (_alias_bomb("template"), ["r2_tr.yaml:", "aliases"]),
    "alias bomb in a recipe": (_alias_bomb("recipe"), ["recipe.yaml:", "aliases"]),
    "card is a FIFO": (_fifo_card, ["r2_tr.yaml", "not a regular file"]),
    "card links to /dev/zero": (_devzero_card, ["r2_tr.yaml", "outside the catalog"]),
    "card links to a FIFO inside the catalog": (_fifo_inside, ["r2_tr.yaml", "not a regular file"]),
    "card links outside the catalog": (_outside_symlink, ["r2_tr.yaml", "outside the catalog"]),
    "file name with a newline": (_newline_name, ["bad\\nname.yaml"]),
    "card larger than the cap": (_huge_card, ["r2_tr.yaml", "larger than"]),
    # 4. silent redefinitions
    "catalog redefines built-in nli": (_override_builtin_cluster, ["clusters.yaml:", "cluster nli is already defined",
                                                                   "override: true"]),
    "catalog replaces built-in templates": (_override_builtin_templates, ["anli_r1.yaml", "already defined"]),
    # 5. command-line numbers and recipe fields
    "temperature nan": (_args("--temperature", "nan"), ["--temperature"]),
    "temperature 1e-320": (_args("--temperature", "1e-320"), ["--temperature"]),
    "train size 10**30": (_args("--train-size", "1" + "0" * 30), ["--train-size"]),
    "max epochs nan": (_args("--max-epochs", "nan"), ["--max-epochs"]),
    "max epochs inf": (_args("--max-epochs", "inf"), ["--max-epochs"]),
    "max epochs 0 with train size": (_args("--max-epochs", "0", "--train-size", "100"), ["--max-epochs 0"]),
    "shard rows 0": (_args("--shard-rows", "0"), ["--shard-rows"]),
    "shard rows -1": (_args("--shard-rows", "-1"), ["--shard-rows"]),
    "cluster weight without a name": (_args("--cluster-weight", "=2"), ["--cluster-weight"]),
    "task weight nan": (_args("--task-weight", "r2_tr=nan"), ["--task-weight"]),
    "seed 2**80": (_args("--seed", str(2 ** 80)), ["--seed"]),
    "render -n -1": (_raw("render", "r2_tr", "--catalog", "CAT", "-n", "-1"), ["-n"]),
    "render template 2**80": (_raw("render", "r2_tr", "--catalog", "CAT", "--template", str(2 ** 80)), ["--template"]),
    "recipe task_cap .inf": (_recipe("name: r\nsubmixtures:\n  - name: m\n    task_cap: .inf\n"),
                             ["recipe.yaml:4", "task_cap must be an integer"]),
    "recipe ngram string": (_recipe("name: r\nsubmixtures: [{name: m}]\ndecontaminate:\n  ngram: x\n"),
                            ["recipe.yaml:4", "ngram must be an integer"]),
    "recipe heldout number": (_recipe("name: r\nheldout: 3\nsubmixtures: [{name: m}]\n"), ["recipe.yaml:2", "heldout"]),
    "recipe example_separator number": (_recipe("name: r\nsubmixtures: [{name: m}]\nprompt:\n  example_separator: 5\n"),
                                        ["recipe.yaml:4", "example_separator must be a string"]),
    "recipe weight nan": (_recipe("name: r\nsubmixtures:\n  - {name: m, weight: .nan}\n"), ["recipe.yaml:3", "weight"]),
    # 10. data
    "invalid UTF-8 in Parquet": (_bad_utf8_parquet, ["r2_tr.parquet", "invalid UTF-8"]),
    "invalid UTF-8 in JSONL": (_bad_utf8_jsonl, ["r2_tr.jsonl"]),
    "HF features is a list": (_hf_metadata([{"text": {"_type": "Value", "dtype": "string"}}]),
                              ["r2_tr.parquet", "features"]),
    "ClassLabel names as a string": (_hf_metadata({"text": {"_type": "Value", "dtype": "string"},
                                                   "label": {"_type": "ClassLabel", "names": "ab"}}),
                                     ["r2_tr.parquet", "ClassLabel names must be a list"]),
    "CSV with duplicate columns": (_csv_duplicate_columns, ["r2_tr.csv", "duplicate column"]),
    "null text field": (_null_text, ["task r2_tr", "field 'text' is null on row 1", "nulls: skip"]),
    # 8. what OUT may be replaced
    "OUT has a foreign file": (_out_with({"results.json": "{}"}), ["results.json", "refuses rather than delete"]),
    "OUT data file edited": (_out_with({"data/train-00000-of-00001.parquet": "edited"}), ["does not match its mixture.json"]),
    "OUT holds an unverified mixture.json": (_out_with({"mixture.json": "{}", "precious.txt": "keep me"}, fresh=True),
                                             ["not a flanbuild output"]),
}
CASES["template id 2**80"] = (_raw("render", "r2_tr", "--catalog", "CAT", "--template", str(2 ** 80)), ["--template"])
del CASES["render template 2**80"]


#: Variants of a case that is already in the fast set (run with the slow tests: the suite's CPU budget).
SLOW_CASES = {
    "str.join of a big list", "str.ljust 10**9", "format filter width", "squaring big ints", "string of nested lists",
    "generator rendered", "function rendered", "list doubling", "macro recursion", "hub id with three parts",
    "config with /", "homepage is a number", "task weight nan", "seed 2**80", "recipe weight nan",
    "alias bomb in templates", "card links to a FIFO inside the catalog", "max epochs inf", "shard rows -1",
}


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW_CASES else c
                                  for c in sorted(CASES)])
def test_bad_input_one_line_nothing_written_previous_output_intact(case, reference, tmp_path):
    setup, expected = CASES[case]
    cat = make_catalog(tmp_path / "cat")
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    extra = setup(cat, tmp_path)
    if extra and extra[0] == "OUT":
        files, fresh = extra[1], extra[2]
        if fresh:
            shutil.rmtree(out)
            out.mkdir()
        for rel, text in files.items():
            (out / rel).write_text(text)
        extra = None
    before = snapshot(out)
    (tmp_path / "cache").mkdir(exist_ok=True)  # the render cache may be written; anything else may not
    siblings = sorted(p.name for p in tmp_path.iterdir())
    args = extra[1:] if extra and extra[0] == "RAW" else build_args(cat, out, *(extra or []))
    proc = run_cli(args, tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("flanbuild: error:"), proc.stderr
    for part in expected:
        assert part in lines[0], (part, lines[0])
    assert snapshot(out) == before  # the previous output (or the user's directory) is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == siblings  # nothing new: no staging dirs left
    if not case.startswith("OUT"):
        assert run_cli(["verify", str(out)], tmp_path).returncode == 0


def test_no_subcommand_prints_usage_and_one_error(tmp_path):
    proc = run_cli([], tmp_path)
    assert proc.returncode == 2
    assert "usage:" in proc.stderr and proc.stderr.strip().splitlines()[-1].startswith("flanbuild: error:")
    assert "Traceback" not in proc.stderr


def test_at_least_70_cases():
    assert len(CASES) >= 70


# -- what is accepted, and what stays true -----------------------------------------------------------------

def test_override_true_is_accepted_and_recorded(tmp_path):
    cat = make_catalog(tmp_path / "cat")
    write(cat / "tasks" / "clusters.yaml", "clusters:\n  r2_train: {}\n  r2_eval: {override: true}\n"
                                             "  nli: {title: mine, override: true}\n")
    out = tmp_path / "out"
    proc = run_cli(build_args(cat, out, "--no-cache"), tmp_path)
    assert proc.returncode == 0, proc.stderr
    overrides = json.loads((out / "mixture.json").read_text())["config"]["overrides"]
    assert [(o["kind"], o["name"]) for o in overrides] == [("cluster", "nli")]
    assert "replaced by a catalog" in (out / "README.md").read_text()


def test_nulls_skip_drops_the_row(tmp_path):
    cat = make_catalog(tmp_path / "cat")
    _null_text(cat, tmp_path)
    _card("type:", "nulls: skip\ntype:")(cat, tmp_path)
    out = tmp_path / "out"
    proc = run_cli(build_args(cat, out, "--no-cache"), tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = pq.read_table(out / "data" / "train-00000-of-00001.parquet").column("inputs").to_pylist()
    assert rows and not any("None" in r for r in rows)


def test_symlinked_out_stays_a_symlink(reference, tmp_path):
    target = tmp_path / "real"
    shutil.copytree(reference, target)
    link = tmp_path / "link"
    link.symlink_to(target)
    cat = make_catalog(tmp_path / "cat")
    proc = run_cli(build_args(cat, link, "--no-cache", "--seed", "1"), tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert json.loads((link / "mixture.json").read_text())["config"]["seed"] == 1
    assert run_cli(["verify", str(link)], tmp_path).returncode == 0


def _cache_parts(cache: Path) -> list[Path]:
    """The render cache's parts (a part has its metadata beside it; other caches may share the directory)."""
    return sorted(p for p in cache.rglob(f"*{parts.SUFFIX}") if p.with_suffix(".json").is_file() and len(p.parent.name) == 2)


@pytest.mark.parametrize("damage", ["flip a byte", "swap two entries", *[
    pytest.param(d, marks=pytest.mark.slow) for d in ("edit rows", "truncate", "bad metadata", "filter cache flipped")]])
def test_damaged_cache_entries_are_rerendered(damage, reference, tmp_path):
    cat = make_catalog(tmp_path / "cat")
    _card("answer: label", "answer: label\nfilter: \"label >= 0\"")(cat, tmp_path)
    expected_dir = tmp_path / "expected"
    assert run_cli(build_args(cat, expected_dir, "--no-cache"), tmp_path).returncode == 0
    out = tmp_path / "out"
    assert run_cli(build_args(cat, out), tmp_path).returncode == 0  # fills the cache
    cached = _cache_parts(tmp_path / "cache")
    assert len(cached) == 2
    if damage == "flip a byte":
        blob = bytearray(cached[0].read_bytes())
        blob[len(blob) // 2] ^= 0x01
        cached[0].write_bytes(bytes(blob))
    elif damage == "edit rows":
        table = pa.Table.from_batches(list(parts.batches(cached[0])))
        table = table.set_column(0, "inputs", pa.array(["EDITED"] * table.num_rows))
        with parts.PartWriter(cached[0], table.schema) as w:
            w.write_table(table)
    elif damage == "swap two entries":
        a, b = cached[0].read_bytes(), cached[1].read_bytes()
        cached[0].write_bytes(b)
        cached[1].write_bytes(a)
    elif damage == "truncate":
        cached[0].write_bytes(cached[0].read_bytes()[:100])
    elif damage == "bad metadata":
        cached[0].with_suffix(".json").write_text('{"key": 1}')
    else:
        filters = sorted((tmp_path / "cache" / "filters").glob("*"))
        assert filters
        blob = bytearray(filters[0].read_bytes())
        blob[-1] ^= 0x7F
        filters[0].write_bytes(bytes(blob))
        for p in cached:  # the render cache must not hide the filter result
            p.unlink()
    proc = run_cli(build_args(cat, out), tmp_path)
    assert proc.returncode == 0, proc.stderr
    for split in ("train", "eval"):
        name = f"data/{split}-00000-of-00001.parquet"
        assert (out / name).read_bytes() == (expected_dir / name).read_bytes(), damage
    assert run_cli(["verify", str(out)], tmp_path).returncode == 0


def test_verify_catches_an_edited_data_file(reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    table = pq.read_table(out / "data" / "train-00000-of-00001.parquet")
    pq.write_table(table.slice(1), out / "data" / "train-00000-of-00001.parquet")
    proc = run_cli(["verify", str(out)], tmp_path)
    assert proc.returncode == 1 and "differs" in proc.stdout


@pytest.mark.slow
def test_two_uncached_builds_are_identical(tmp_path):
    cat = make_catalog(tmp_path / "cat")
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        assert run_cli(build_args(cat, out, "--no-cache"), tmp_path).returncode == 0
    assert snapshot(outs[0] / "data") == snapshot(outs[1] / "data")


def test_a_local_directory_is_never_a_hub_id(tmp_path):
    """``hub: data`` when ./data exists: the datasets library would read the directory; refused."""
    cat = make_catalog(tmp_path / "cat")
    _set(cat / "tasks" / "r2_tr.yaml", "  files: {train: data/r2_tr.jsonl, eval: data/r2_tr.jsonl}",
         "  hub: data\n  splits: {train: train}")
    from flanbuild.catalog.registry import Registry
    from flanbuild.sources.loader import _load_from_hub
    from flanbuild.errors import FlanbuildError

    registry = Registry()
    registry.load_catalog(cat)
    cwd = os.getcwd()
    os.chdir(cat)
    try:
        with pytest.raises(FlanbuildError, match="not a Hub dataset id"):
            _load_from_hub(registry.task("r2_tr"), "train", [])
    finally:
        os.chdir(cwd)


# -- 6. workers die with the build ---------------------------------------------------------------------------

def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
@pytest.mark.parametrize("engine", ["local", "dask"])
def test_no_worker_outlives_a_killed_build(sig, engine, tmp_path):
    """The process pool (fork server + 2 workers) or the local Dask cluster (2 worker processes) end with
    the build, however it is killed."""
    if engine == "dask":
        pytest.importorskip("dask.distributed")
    cat = make_catalog(tmp_path / "cat")
    slow = "{% for i in range(60) %}{{ text|upper }}{% endfor %}"
    for name in ("r2_tr", "r2_ev"):
        write_jsonl(cat / "data" / f"{name}.jsonl", [{"text": f"sentence {i}", "label": i % 2} for i in range(15000)])
        _set(cat / "templates" / f"{name}.yaml", '"Label: {{text}}"', json.dumps(slow))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FLANBUILD_DATA_DIR": "", "PYTHONPATH": str(REPO)}
    args = build_args(cat, tmp_path / "out", "--no-cache", "--task-cap", "0", "--rate-cap", "0")
    args[args.index("--workers") + 1] = "2"
    args += ["--engine", engine]
    expected = 3 if engine == "local" else 2
    proc = subprocess.Popen([sys.executable, "-m", "flanbuild", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, preexec_fn=_limits)
    workers: set[int] = set()
    deadline = time.monotonic() + 120
    while len(workers) < expected and proc.poll() is None and time.monotonic() < deadline:
        workers |= _descendants(proc.pid)
        time.sleep(0.1)
    assert len(workers) >= expected, "the workers never started"
    proc.send_signal(sig)
    proc.wait()
    deadline = time.monotonic() + 30  # a bound on waiting, not a speed assertion
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    survivors = [p for p in workers if _alive(p)]
    for p in survivors:
        os.kill(p, signal.SIGKILL)
    assert not survivors
    assert not (tmp_path / "out").exists()
