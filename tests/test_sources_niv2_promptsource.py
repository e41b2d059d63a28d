"""Super-NaturalInstructions and promptsource-format sources, end to end."""

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flanbuild.builder import BuildConfig, build
from flanbuild.errors import FlanbuildError
from flanbuild.pipeline.mixer import MixConfig
from flanbuild.catalog.recipes import Recipe, Submixture
from flanbuild.sources.niv2 import load_niv2
from flanbuild.sources.promptsource import PromptsourceTemplate, load_templates_yaml
from flanbuild.catalog.registry import Registry
from conftest import MIRROR, add_sst_like, write

NIV2 = MIRROR.parent / "niv2"


def rows_of(out: Path, split: str) -> list[dict]:
    return pa.concat_tables(pq.read_table(p) for p in sorted((out / "data").glob(f"{split}-*"))).to_pylist()


@pytest.fixture
def niv2_dir():
    if not (NIV2 / "tasks").is_dir():
        pytest.skip(f"NIv2 subset not found at {NIV2}")
    return NIV2


def test_niv2_tasks_follow_official_split_and_categories(niv2_dir):
    tasks = {t.name: t for t in load_niv2(niv2_dir)}
    assert len(tasks) == 6
    sst2 = tasks["niv2_task363_sst2_polarity_classification"]
    assert sst2.cluster == "sentiment" and "train" in sst2.source.tables and "eval" not in sst2.source.tables
    cb = tasks["niv2_task1388_cb_entailment"]
    assert cb.cluster == "nli" and list(cb.source.tables) == ["eval"]  # official test task
    assert tasks["niv2_task828_copa_commonsense_cause_effect"].cluster == "commonsense"
    assert tasks["niv2_task1159_bard_analogical_reasoning_containers"].cluster == "misc"
    assert cb.source.tables["eval"].num_rows == 23 and len(cb.templates) == 5


def test_niv2_build(niv2_dir, tmp_path):
    recipe = Recipe("t", submixtures=(Submixture("niv2", source="niv2", task_cap=0),))
    result = build(BuildConfig(out=tmp_path / "o", recipe=recipe, niv2_dir=niv2_dir, mix=MixConfig(heldout=("nli",))))
    m = result.manifest
    train, evals = rows_of(result.out, "train"), rows_of(result.out, "eval")
    assert {r["task_name"] for r in train} == {"niv2_task363_sst2_polarity_classification"}
    assert {r["task_name"] for r in evals} == {"niv2_task1385_anli_r1_entailment", "niv2_task1388_cb_entailment"}
    assert "evaluation only" in m["skipped"]["niv2_task828_copa_commonsense_cause_effect"]
    assert all(r["task_source"] == "niv2" for r in train + evals)
    doc = json.loads((niv2_dir / "tasks" / "task363_sst2_polarity_classification.json").read_text())
    by_id = {int(r["example_id"].rsplit("/", 1)[1]): r for r in train}
    for i, r in by_id.items():
        instance = doc["Instances"][i]
        assert instance["input"] in r["inputs"] and doc["Definition"][0].strip()[:60] in r["inputs"]
        assert r["targets"] == instance["output"][0] and r["references"] == instance["output"]
    with_examples = [r for r in train if r["template_id"] in (3, 4, 5)]
    assert with_examples and all(doc["Positive Examples"][0]["input"] in r["inputs"] for r in with_examples)
    assert any("Explanation:" in r["inputs"] for r in train if r["template_id"] == 5)


def test_niv2_bad_dir(tmp_path):
    with pytest.raises(FlanbuildError, match="no NIv2 task files"):
        load_niv2(tmp_path)
    (tmp_path / "task1_x.json").write_text("{not json")
    with pytest.raises(FlanbuildError, match="not a NIv2 task file"):
        load_niv2(tmp_path)


# -- promptsource ----------------------------------------------------------------------------------

PS_YAML = '''dataset: toy_sst
templates:
  aaaa-1: !Template
    answer_choices: negative ||| positive
    id: aaaa-1
    jinja: "Review: {{text}}\\nIs this review {{ answer_choices | join(' or ') }}? |||\\n  {{ answer_choices[label] }}  "
    metadata: !TemplateMetadata
      choices_in_prompt: true
      languages: [en]
      metrics: [Accuracy]
      original_task: true
    name: polarity_question
    reference: written for flanbuild's tests
  bbbb-2: !Template
    answer_choices: null
    id: bbbb-2
    jinja: "{{ ['Summarize', 'Shorten', 'Condense', 'Abridge'] | choice }}: {{text}}|||{{ text.split(' ')[0] }}"
    metadata: !TemplateMetadata
      choices_in_prompt: false
      languages: [en]
      metrics: [ROUGE]
      original_task: false
    name: first_word
    reference: written for flanbuild's tests
'''


def jinja_truncate(s: str, length: int = 2048, end: str = "...", leeway: int = 5) -> str:
    """Jinja's truncate filter with its defaults (killwords=False), written out for the expectation."""
    if len(s) <= length + leeway:
        return s
    return s[: length - len(end)].rsplit(" ", 1)[0] + end


def test_promptsource_render_matches_promptsource_semantics(tmp_path):
    path = write(tmp_path / "toy_sst" / "templates.yaml", PS_YAML)
    dataset, subset, (polarity, first_word) = load_templates_yaml(path)
    assert (dataset, subset) == ("toy_sst", None) and polarity.shows_options and not first_word.shows_options
    rng = random.Random(0)
    assert polarity.apply({"text": "Great film.", "label": 1}, rng) == (
        "Review: Great film.\nIs this review negative or positive?", "positive", ["negative", "positive"])
    # '|||' inside the data does not split the prompt
    assert polarity.apply({"text": "a ||| b", "label": 0}, rng)[:2] == ("Review: a ||| b\nIs this review negative or positive?", "negative")
    # variables are truncated to 2048 characters at a word boundary, as promptsource does
    long = " ".join(f"w{i}" for i in range(1500))
    inp, tgt, _ = polarity.apply({"text": long, "label": 0}, rng)
    assert inp == f"Review: {jinja_truncate(long)}\nIs this review negative or positive?" and tgt == "negative"
    # the choice filter is seeded: the same rng seed gives the same choice, different seeds vary
    picks = {first_word.apply({"text": "hello world"}, random.Random(s))[0] for s in range(40)}
    assert picks == {f"{w}: hello world" for w in ("Summarize", "Shorten", "Condense", "Abridge")}
    assert first_word.apply({"text": "hello world"}, random.Random(3)) == first_word.apply({"text": "hello world"}, random.Random(3))
    assert first_word.apply({"text": "hello world"}, random.Random(3))[1:] == ("hello", [])


def test_promptsource_sandbox_refuses_internals(tmp_path):
    t = PromptsourceTemplate(1, "evil", "{{ text.__class__.__mro__ }} ||| x")
    with pytest.raises(Exception, match="unsafe|not safely|access"):
        t.apply({"text": "hi"}, random.Random(0))


def test_promptsource_build(toy_catalog, tmp_path):
    add_sst_like(toy_catalog, [f"film number {i} was ok" for i in range(60)])
    ps_dir = tmp_path / "ps"
    write(ps_dir / "toy_sst" / "templates.yaml", PS_YAML)
    write(ps_dir / "unknown_ds" / "templates.yaml", PS_YAML.replace("dataset: toy_sst", "dataset: unknown_ds"))
    registry = Registry()
    registry.load_catalog(toy_catalog)
    recipe = Recipe("t", submixtures=(Submixture("t0", source="promptsource", task_cap=0),))
    cfg = BuildConfig(out=tmp_path / "o", recipe=recipe, promptsource_dir=ps_dir, mix=MixConfig(heldout=("toy_nli",)),
                      allow_empty_split=True)
    result = build(cfg, registry=registry)
    rows = rows_of(result.out, "train")
    assert {r["task_name"] for r in rows} == {"p3_toy_sst"} and len(rows) == 60
    for r in rows:
        i = int(r["example_id"].rsplit("/", 1)[1])
        if r["template_id"] == 1:
            assert r["inputs"] == f"Review: film number {i} was ok\nIs this review negative or positive?"
            assert r["targets"] == ["negative", "positive"][i % 2] and r["options"] == ["negative", "positive"]
            assert r["template_type"] == "zs_opt"
        else:
            assert r["inputs"].endswith(f": film number {i} was ok") and r["targets"] == "film"
            assert r["template_type"] == "zs_noopt" and r["options"] == []
    assert any("unknown_ds" in k for k in result.manifest["skipped"])
    again = build(BuildConfig(out=tmp_path / "o2", recipe=recipe, promptsource_dir=ps_dir,
                              mix=MixConfig(heldout=("toy_nli",)), allow_empty_split=True), registry=registry)
    assert again.manifest["fingerprint"] == result.manifest["fingerprint"]


def test_promptsource_bad_file(tmp_path):
    bad = write(tmp_path / "x" / "templates.yaml", "dataset: x\ntemplates:\n  a: !Template\n    jinja: 'no separator'\n")
    with pytest.raises(FlanbuildError, match="needs a 'jinja' string with '|||'"):
        load_templates_yaml(bad)
    evil = write(tmp_path / "y" / "templates.yaml", "dataset: y\ntemplates: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(FlanbuildError, match="not a promptsource templates file"):
        load_templates_yaml(evil)
