"""promptsource complete: mutating templates, skipped templates, attach rules, schema drift, 0-row tasks,
template metadata, few-shot P3 rows, distinct upsampling, and (when the sdist is cached) all 279 files."""

import json
import os
import random
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flanbuild.builder import BuildConfig, build
from flanbuild.catalog.recipes import PromptStyle, Recipe, Submixture
from flanbuild.catalog.registry import Registry
from flanbuild.pipeline.mixer import MixConfig
from flanbuild.sources import promptsource as ps
from conftest import add_sst_like, write, write_jsonl

# Verified against promptsource 0.2.3's own Template.apply (jinja2 3.1.6) on the same rows:
#   ['Words: the quick brown fox jumps', 'QUICK, BROWN, JUMPS'] and ['Sum 12 last 5 rest [3, 4]', 'high'].
MUTATING_YAML = r'''dataset: toy_words
templates:
  m-1: !Template
    answer_choices: null
    id: m-1
    jinja: "{% set found = [] %}{% for w in words %}{% if w|length > 3 %}{{ found.append(w|upper) or '' }}{% endif %}{% endfor %}Words: {{ words|join(' ') }} ||| {{ found|join(', ') }}"
    metadata: !TemplateMetadata
      choices_in_prompt: false
      metrics: [Other]
      original_task: false
    name: collect
    reference: flanbuild test
  m-2: !Template
    answer_choices: low ||| high
    id: m-2
    jinja: "{% set d = {'n': 0} %}{% for x in nums %}{{ d.update({'n': d['n'] + x}) | default('', True) }}{% endfor %}{% set last = nums.pop() %}Sum {{ d['n'] }} last {{ last }} rest {{ nums }} ||| {{ answer_choices[label] }}"
    metadata: !TemplateMetadata
      choices_in_prompt: false
      metrics: [Accuracy]
      original_task: true
    name: sum
    reference: flanbuild test
'''


def rows_of(out: Path, split: str) -> list[dict]:
    return pa.concat_tables(pq.read_table(p) for p in sorted((out / "data").glob(f"{split}-*"))).to_pylist()


def test_mutating_templates_render_as_promptsource(tmp_path):
    f = ps.read_templates_file(write(tmp_path / "toy_words" / "templates.yaml", MUTATING_YAML))
    assert not f.skipped and [t.mutates for t in f.templates] == [True, True]
    collect, total = f.templates
    assert collect.apply({"words": ["the", "quick", "brown", "fox", "jumps"]}, random.Random(0))[:2] == (
        "Words: the quick brown fox jumps", "QUICK, BROWN, JUMPS")
    row = {"nums": [3, 4, 5], "label": 1}
    assert total.apply(row, random.Random(0)) == ("Sum 12 last 5 rest [3, 4]", "high", ["low", "high"])
    assert row == {"nums": [3, 4, 5], "label": 1}  # template-local: the row itself is never changed
    assert total.apply(row, random.Random(0))[0] == "Sum 12 last 5 rest [3, 4]"  # same result the second time
    assert collect.info == {"name": "collect", "original_task": False, "choices_in_prompt": False, "metrics": ["Other"]}


def test_mutating_sandbox_keeps_the_limits():
    runaway = ps.PromptsourceTemplate(1, "grow", "{% set l = [] %}{% for i in range(10000) %}{% for j in range(20) %}"
                                                 "{{ l.append(i) or '' }}{% endfor %}{% endfor %} ||| x")
    with pytest.raises(Exception, match="longer than"):
        runaway.apply({}, random.Random(0))
    evil = ps.PromptsourceTemplate(2, "evil", "{% set l = [] %}{{ l.append.__self__.__class__ }} ||| x")
    with pytest.raises(Exception, match="unsafe"):
        evil.apply({}, random.Random(0))
    # the catalog's own environment stays immutable
    from flanbuild.sandbox.environment import environment, render_limited
    with pytest.raises(Exception, match="unsafe"):
        render_limited(environment().from_string("{% set l = [] %}{{ l.append(1) }}"), {}, 100)


def test_unusable_templates_are_skipped_with_reasons(tmp_path):
    text = MUTATING_YAML + r'''  b-1: !Template
    id: b-1
    jinja: "{{ words | join( }} ||| x"
    name: broken
  b-2: !Template
    id: b-2
    jinja: "no separator"
    name: no_target
'''
    f = ps.read_templates_file(write(tmp_path / "toy_words" / "templates.yaml", text))
    assert [t.name for t in f.templates] == ["collect", "sum"]
    reasons = dict(f.skipped)
    assert "syntax error" in reasons["broken"] and "'|||'" in reasons["no_target"]


def _card(catalog: Path, name: str, hub: str, config: str, splits: str, features: str, fields: str, rows: list[dict],
          cluster: str = "toy_sent"):
    write(catalog / "tasks" / f"{name}.yaml", f"""
name: {name}
cluster: {cluster}
source:
  hub: {hub}
  config: {config}
  splits: {splits}
  files: {{train: data/{name}.jsonl}}
features: {features}
fields: {fields}
type: generation
answer: text
""")
    write(catalog / "templates" / f"{name}.yaml", f"task: {name}\ntemplates:\n  - {{id: 1, input: 'Say {{{{text}}}}', target: '{{{{answer}}}}'}}\n")
    write_jsonl(catalog / "data" / f"{name}.jsonl", rows)


def test_attach_rules(toy_catalog):
    rows = [{"text": "a"}]
    _card(toy_catalog, "plainds", "org/plainds", "plain_text", "{train: train}", "{text: string}", "{text: text}", rows)
    _card(toy_catalog, "namedds", "org/namedds", "namedds", "{train: train}", "{text: string}", "{text: text}", rows)
    _card(toy_catalog, "sg_wsc", "org/super_glue", "wsc", "{train: train, eval: validation}", "{text: string}", "{text: text}", rows)
    _card(toy_catalog, "pairs_matched", "org/glue", "pairs", "{train: train, eval: validation_matched}", "{text: string}", "{text: text}", rows)
    _card(toy_catalog, "pairs_mismatched", "org/glue", "pairs", "{train: train, eval: validation_mismatched}", "{text: string}", "{text: text}", rows)
    _card(toy_catalog, "rounds_r1", "org/rounds", "plain_text", "{train: train_r1}", "{text: string}", "{text: text}", rows)
    _card(toy_catalog, "rounds_r2", "org/rounds", "plain_text", "{train: train_r2}", "{text: string}", "{text: text}", rows)
    registry = Registry()
    registry.load_catalog(toy_catalog)
    tmpl = "templates:\n  a: !Template\n    id: a\n    jinja: '{{text}} ||| {{text}}'\n    name: echo\n"
    root = toy_catalog.parent / "ps"
    for dataset, subset in [("plainds", None), ("namedds", None), ("super_glue", "wsc.fixed"), ("glue", "pairs"),
                            ("glue", "pairs_matched"), ("glue", "pairs_mismatched"), ("rounds", None), ("other", None)]:
        write(root / dataset / (subset or "") / "templates.yaml",
              f"dataset: {dataset}\n" + (f"subset: {subset}\n" if subset else "") + tmpl)
    tasks, skipped = ps.load_promptsource(root, registry.tasks)
    by_name = {t.name: t for t in tasks}
    assert set(by_name) == {"p3_plainds", "p3_namedds", "p3_super_glue_wsc_fixed", "p3_glue_pairs", "p3_rounds_r1",
                            "p3_rounds_r2"}
    assert by_name["p3_super_glue_wsc_fixed"].source.config == "wsc"
    assert by_name["p3_rounds_r2"].source.splits["train"] == "train_r2"
    assert "validation and test rows" in skipped["p3_glue_pairs_matched"]
    assert "validation and test rows" in skipped["p3_glue_pairs_mismatched"]
    assert any("no catalog task reads other/default" == v for v in skipped.values())


def test_trec_schema_drift_maps_columns_and_labels(tmp_path):
    coarse = ["ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"]
    fine = ["ABBR:abb", "ABBR:exp", "LOC:city", "LOC:other", "NUM:other"]
    drift = ps.drift_columns("trec", {"text": "string", "coarse_label": {"class_label": coarse},
                                      "fine_label": {"class_label": fine}})
    t = ps.PromptsourceTemplate(1, "coarse", "{{text}} ||| {{ answer_choices[label_coarse] }} {{ label_fine }}",
                                answer_choices="Description ||| Entity ||| Abbreviation ||| Person ||| Quantity ||| Location",
                                drift=drift)
    # ABBR is index 2 of the old coarse order; LOC:city is 'city' (21) of the old fine order
    assert t.apply({"text": "What is NASA?", "coarse_label": 0, "fine_label": 2}, random.Random(0))[:2] == (
        "What is NASA?", "Abbreviation 21")
    assert t.apply({"text": "Where?", "coarse_label": 4, "fine_label": 3}, random.Random(0))[1] == "Location 14"


def test_build_skips_failing_and_empty_templates_and_keeps_metadata(toy_catalog, tmp_path):
    rows = [{"words": ["alpha", "be", "gamma", f"w{i}"], "nums": [i, i + 1, 2], "label": i % 2} for i in range(30)]
    write(toy_catalog / "tasks" / "words.yaml", """
name: words
cluster: toy_sent
source:
  hub: someone/toy_words
  splits: {train: train}
  files: {train: data/words.jsonl}
features: {words: [string], nums: [int64], label: int64}
fields: {first: 'words[0]'}
type: generation
answer: 'words[0]'
""")
    write(toy_catalog / "templates" / "words.yaml", "task: words\ntemplates:\n  - {id: 1, input: 'First of: {{first}}', target: '{{answer}}'}\n")
    write_jsonl(toy_catalog / "data" / "words.jsonl", rows)
    ps_dir = tmp_path / "ps"
    write(ps_dir / "toy_words" / "templates.yaml", MUTATING_YAML + r'''  e-1: !Template
    id: e-1
    jinja: "{{ words.__class__ }} ||| x"
    name: unsafe_attr
''')
    empty = "dataset: toy_sst\ntemplates:\n  z: !Template\n    id: z\n    jinja: '{{text}} ||| {{ missing_column }}'\n    name: empty_target\n"
    write(ps_dir / "toy_sst" / "templates.yaml", empty)
    add_sst_like(toy_catalog, [f"film {i}" for i in range(20)])
    registry = Registry()
    registry.load_catalog(toy_catalog)
    recipe = Recipe("t", submixtures=(Submixture("t0", source="promptsource", task_cap=0),
                                      Submixture("ours", tasks=("words",), task_cap=0)))
    result = build(BuildConfig(out=tmp_path / "o", recipe=recipe, promptsource_dir=ps_dir, allow_empty_split=True,
                               mix=MixConfig(heldout=("toy_nli",))), registry=registry)
    skipped = result.manifest["skipped"]
    assert "unsafe" in skipped["p3_toy_words template 3 'unsafe_attr'"]
    assert skipped["p3_toy_sst"].startswith("rendered 0 rows")
    assert "p3_toy_sst" not in result.manifest["tasks"]
    rows = rows_of(result.out, "train")
    assert {(r["task_name"], r["template_name"]) for r in rows} == {
        ("p3_toy_words", "collect"), ("p3_toy_words", "sum"), ("words", "words_1")}
    for r in rows:
        if r["template_name"] == "sum":
            i = int(r["example_id"].rsplit("/", 1)[1])
            assert r["inputs"] == f"Sum {2 * i + 3} last 2 rest [{i}, {i + 1}]" and r["targets"] == ["low", "high"][i % 2]
    info = result.manifest["tasks"]["p3_toy_words"]["template_info"]
    assert info["2"] == {"name": "sum", "original_task": True, "choices_in_prompt": False, "metrics": ["Accuracy"]}
    assert "3" not in info


def test_few_shot_share_and_distinct_upsampling_for_p3_rows(toy_catalog, tmp_path):
    three = "dataset: toy_sst\ntemplates:\n" + "".join(
        f"  t{n}: !Template\n    id: t{n}\n    answer_choices: negative ||| positive\n"
        f"    jinja: 'Variant {n}: {{{{text}}}} ||| {{{{ answer_choices[label] }}}}'\n    name: v{n}\n" for n in range(3))
    ps_dir = tmp_path / "ps"
    write(ps_dir / "toy_sst" / "templates.yaml", three)
    add_sst_like(toy_catalog, [f"film number {i}" for i in range(40)])
    registry = Registry()
    registry.load_catalog(toy_catalog)
    recipe = Recipe("t", submixtures=(Submixture("t0", source="promptsource", task_cap=0),),
                    prompt=PromptStyle(few_shot=0.5, k=(1, 2)))
    result = build(BuildConfig(out=tmp_path / "o", recipe=recipe, promptsource_dir=ps_dir, allow_empty_split=True,
                               mix=MixConfig(heldout=("toy_nli",), train_size=120, max_epochs=3)), registry=registry)
    rows = rows_of(result.out, "train")
    assert len(rows) == 120
    kinds = Counter(r["template_type"][:2] for r in rows)
    assert kinds["fs"] > 20 and kinds["zs"] > 20
    for r in rows:
        if r["few_shot_ids"]:
            assert r["example_id"] not in r["few_shot_ids"] and r["inputs"].count("Variant") == len(r["few_shot_ids"]) + 1
    per_row = defaultdict(list)
    for r in rows:
        per_row[r["example_id"]].append(r["template_name"])
    # three repeats of each row over three templates: every (row, template) exactly once
    assert all(sorted(v) == ["v0", "v1", "v2"] for v in per_row.values()) and len(per_row) == 40


def _sdist_templates() -> Path | None:
    """promptsource 0.2.3's templates, if cached: $FLANBUILD_PROMPTSOURCE_TEMPLATES or
    ~/.cache/flanbuild/promptsource-0.2.3/promptsource/templates (`pip download --no-deps promptsource==0.2.3`)."""
    for base in (os.environ.get("FLANBUILD_PROMPTSOURCE_TEMPLATES"),
                 Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "flanbuild/promptsource-0.2.3/promptsource/templates"):
        if base and Path(base).is_dir():
            return Path(base)
    return None


def test_all_promptsource_0_2_3_files_build(tmp_path, monkeypatch):
    root = _sdist_templates()
    if root is None:
        pytest.skip("promptsource 0.2.3 sdist not cached (pip download --no-deps promptsource==0.2.3, extract into "
                    "~/.cache/flanbuild/ or set FLANBUILD_PROMPTSOURCE_TEMPLATES)")
    files = sorted(root.rglob("templates.yaml"))
    assert len(files) == 279
    parsed = [ps.read_templates_file(p) for p in files]
    mutating = [t for f in parsed for t in f.templates if t.mutates]
    assert len(mutating) >= 190 and sum(len(f.templates) + len(f.skipped) for f in parsed) == 2085
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = Recipe("t0only", heldout=("nli",), submixtures=(Submixture("t0", source="promptsource", task_cap=300),),
                    prompt=PromptStyle(few_shot=0.5, k=(1, 2)))
    data_dirs = tuple(d for d in [os.environ.get("FLANBUILD_DATA_DIR")] if d)
    result = build(BuildConfig(out=tmp_path / "o", recipe=recipe, promptsource_dir=root, allow_empty_split=True,
                               data_dirs=data_dirs, use_cache=False))
    manifest = json.loads((result.out / "mixture.json").read_text())
    assert sum(1 for k in manifest["skipped"] if k.endswith("templates.yaml")) > 200  # datasets without a card
    for name, task in manifest["tasks"].items():
        assert name.startswith("p3_") and task["rows"] > 0 and task["template_info"]
