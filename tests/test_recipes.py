"""Flan Collection mixing: template types, few-shot, option layouts, recipes, decontamination."""

from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from flanbuild.pipeline import layouts
from flanbuild.builder import BuildConfig, build
from flanbuild.errors import FlanbuildError
from flanbuild.pipeline.mixer import MixConfig
from flanbuild.catalog.recipes import PromptStyle, Recipe, Submixture, load_recipe
from flanbuild.catalog.registry import Registry
from conftest import read_split, write, write_jsonl

STYLE = PromptStyle(few_shot=0.5, options=0.5, option_layouts=True, k=(1, 2, 3))


@pytest.fixture
def mc_registry(tmp_path):
    """One multiple-choice task (4 options, 3 option-showing templates) with 2000 train rows + a held-out task."""
    root = tmp_path / "mc"
    write(root / "tasks" / "clusters.yaml", "clusters:\n  qa: {}\n  held: {}\n")
    for name, cluster in (("mc", "qa"), ("ho", "held")):
        write(root / "tasks" / f"{name}.yaml", f"""
            name: {name}
            cluster: {cluster}
            source: {{files: {{train: data/{name}_train.jsonl, eval: data/{name}_eval.jsonl}}}}
            fields: {{q: q}}
            type: classification
            options: [red, green, blue, black]
            answer: a
        """)
        write(root / "templates" / f"{name}.yaml", f"""
            task: {name}
            templates:
              - {{id: 1, input: "Q: {{{{q}}}}\\n\\n{{{{options_block}}}}", target: "{{{{answer}}}}"}}
              - {{id: 2, input: "Which colour? {{{{q}}}}\\n{{{{options_block}}}}", target: "{{{{answer}}}}"}}
              - {{id: 3, input: "{{{{q}}}} Pick one.\\n{{{{options_block}}}}", target: "{{{{answer}}}}"}}
        """)
        for split, n in (("train", 2000 if name == "mc" else 50), ("eval", 40)):
            write_jsonl(root / "data" / f"{name}_{split}.jsonl",
                        [{"q": f"{name} {split} question {i}", "a": i % 4} for i in range(n)])
    registry = Registry()
    registry.load_catalog(root)
    return registry


def recipe(**style):
    return Recipe("test", submixtures=(Submixture("main", task_cap=0),), prompt=replace(STYLE, **style))


def run(registry, out, seed=0, **style):
    cfg = BuildConfig(out=out, seed=seed, recipe=recipe(**style), mix=MixConfig(heldout=("held",)))
    return build(cfg, registry=registry)


def train_rows(out: Path) -> list[dict]:
    return read_split(out, "train").to_pylist()


def test_template_type_ratios(mc_registry, tmp_path):
    rows = train_rows(run(mc_registry, tmp_path / "o").out)
    counts = Counter(r["template_type"] for r in rows)
    assert len(rows) == 2000
    for kind in ("zs_opt", "zs_noopt", "fs_opt", "fs_noopt"):
        assert abs(counts[kind] / len(rows) - 0.25) < 0.04, counts
    assert all(r["task_source"] == "main" for r in rows)


def test_few_shot_never_includes_the_query_and_follows_the_template(mc_registry, tmp_path):
    rows = train_rows(run(mc_registry, tmp_path / "o").out)
    few = [r for r in rows if r["template_type"].startswith("fs_")]
    assert few and all(r["few_shot_ids"] for r in few)
    assert not any(r["example_id"] in r["few_shot_ids"] for r in rows)
    assert all(not r["few_shot_ids"] for r in rows if r["template_type"].startswith("zs_"))
    assert {len(r["few_shot_ids"]) for r in few} == {1, 2, 3}
    for r in few[:50]:
        # every exemplar's question appears in the input, in the query's template, before the query
        for ex_id in r["few_shot_ids"]:
            i = int(ex_id.rsplit("/", 1)[1])
            assert f"mc train question {i}" in r["inputs"]
        assert r["inputs"].rstrip().endswith(r["inputs"].split("\n\n")[-1])


def test_labelled_layouts_make_the_label_the_target(mc_registry, tmp_path):
    rows = train_rows(run(mc_registry, tmp_path / "o").out)
    shown = [r for r in rows if r["template_type"].endswith("_opt")]
    styles = Counter(r["option_style"].split("|")[1] for r in shown)
    assert len(styles) == len(layouts.ITEM_STYLES)  # every itemisation style is used
    for r in shown:
        assert r["targets"] in r["options"]
        labelled = r["option_style"].split("|")[1] in ("letter_paren", "letter_dot", "number_dot", "number_paren", "roman")
        assert (r["options"] != ["red", "green", "blue", "black"]) == labelled
    assert all(r["option_style"] == "" and r["options"] == ["red", "green", "blue", "black"]
               for r in rows if r["template_type"].endswith("_noopt"))


def test_same_seed_same_bytes_with_layouts_and_exemplars(mc_registry, tmp_path):
    a = run(mc_registry, tmp_path / "a", seed=5)
    b = run(mc_registry, tmp_path / "b", seed=5)
    c = run(mc_registry, tmp_path / "c", seed=6)
    assert a.manifest["fingerprint"] == b.manifest["fingerprint"] != c.manifest["fingerprint"]


def test_mixed_mode_uses_other_templates(mc_registry, tmp_path):
    rows = train_rows(run(mc_registry, tmp_path / "o", few_shot=1.0, few_shot_mode="mixed", k=(3,)).out)
    mixed = 0
    for r in rows:
        blocks = r["inputs"].split("\n\n")
        mixed += len({b.split("mc ")[0] for b in blocks if "mc " in b}) > 1
    assert mixed > len(rows) / 3


def test_length_budget_prunes_exemplars(mc_registry, tmp_path):
    rows = train_rows(run(mc_registry, tmp_path / "o", few_shot=1.0, k=(3,), max_input_tokens=40, option_layouts=False).out)
    assert all(-(-len(r["inputs"]) // 4) <= 40 or not r["few_shot_ids"] for r in rows)
    kept = Counter(len(r["few_shot_ids"]) for r in rows)
    assert kept[3] > 0 and kept[0] + kept[1] + kept[2] > 0.2 * len(rows)  # long (options shown) rows lose some
    assert all(r["template_type"].startswith("zs_") for r in rows if not r["few_shot_ids"])
    unlimited = train_rows(run(mc_registry, tmp_path / "u", few_shot=1.0, k=(3,), option_layouts=False).out)
    assert all(len(r["few_shot_ids"]) == 3 for r in unlimited)
    for short, full in zip(rows, unlimited):  # the farthest exemplars (first in the input) are the ones dropped
        assert full["few_shot_ids"][len(full["few_shot_ids"]) - len(short["few_shot_ids"]):] == short["few_shot_ids"]


def test_length_budget_with_a_real_tokenizer(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    from flanbuild.pipeline.render import _Lengths

    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(tmp_path / "tok")
    lengths = _Lengths(str(tmp_path / "tok"))
    assert lengths("a a a b c") == 5 and _Lengths(None)("a a a b c") == 3  # 9 chars / 4, rounded up


def test_inverted_weight(tmp_path, toy_registry):
    r = Recipe("t", submixtures=(Submixture("m", task_cap=0),), prompt=PromptStyle(inverted_weight=1.0))
    # every training row once (no upsampling): repeats take unused (template, layout) combinations first,
    # which would pull the inverted template's share towards 1 in 4 whatever its weight
    out = build(BuildConfig(out=tmp_path / "o", recipe=r, mix=MixConfig(heldout=("toy_nli",), train_size=440)),
                registry=toy_registry).out
    rows = [x for x in train_rows(out) if x["task_name"].startswith("sent")]
    share = sum(x["template_id"] == 4 for x in rows) / len(rows)
    assert abs(share - 0.5) < 0.05  # weight 1.0 vs 1.0: half the rows use the one inverted template


def test_shipped_recipes_and_errors(tmp_path):
    flan2021, flan2022 = load_recipe("flan2021"), load_recipe("flan2022")
    assert flan2021.prompt.few_shot == 0 and not flan2021.prompt.option_layouts
    # the Flan Collection's five submixtures, weights and caps (Longpre et al., 2023; google-research/FLAN
    # flan/v2/mixtures.py DEFAULT_MIXTURE_MAX_EXAMPLES)
    assert [s.name for s in flan2022.submixtures] == ["flan2021", "t0", "niv2", "cot", "dialog"]
    assert [s.weight for s in flan2022.submixtures] == [0.40, 0.32, 0.20, 0.05, 0.03]
    assert [s.task_cap for s in flan2022.submixtures] == [30000, 20000, 5000, 100000, 200000]
    assert flan2022.submixtures[-1].clusters == ("dialog",)
    assert all("dialog" in s.exclude_clusters for s in (flan2021.submixtures[0], flan2022.submixtures[0]))
    assert flan2022.prompt.inverted_weight == 0.3 and flan2022.decontaminate_ngram == 13
    with pytest.raises(FlanbuildError, match="unknown mixture 'flan2099'"):
        load_recipe("flan2099")
    for body, match in [
        ("name: x\nsubmixtures: [{name: a, weight: 0}]\n", "weight must be > 0"),
        ("name: x\nsubmixtures: [{name: a, colour: red}]\n", "unknown submixture key"),
        ("name: x\nsubmixtures: []\n", "at least one submixture"),
        ("name: x\nsubmixtures: [{name: a}]\nprompt: {few_shot: 2}\n", "between 0 and 1"),
        ("name: x\nsubmixtures: [{name: a, source: web}]\n", "source must be"),
    ]:
        with pytest.raises(FlanbuildError, match=match):
            load_recipe(str(write(tmp_path / "r.yaml", body)))


def test_decontamination_removes_planted_duplicates(toy_catalog, tmp_path):
    # plant: 7 training rows of sent_a are copies of eval rows of the held-out nli_a (same text, same
    # template wording), 3 only differ in case and punctuation -> all 10 must go.
    for name in ("sent_a", "nli_a"):
        write(toy_catalog / "templates" / f"{name}.yaml",
              f"task: {name}\ntemplates:\n  - {{id: 1, input: 'Classify: {{{{text}}}}', target: '{{{{answer}}}}'}}\n")
    rows = [{"text": f"sentence {i}", "label": i % 2} for i in range(100)]
    rows[:7] = [{"text": f"nli_a eval sentence number {i}", "label": 0} for i in range(7)]
    rows[7:10] = [{"text": f"NLI_A eval sentence number {i}!!", "label": 0} for i in range(7, 10)]
    write_jsonl(toy_catalog / "data" / "sent_a_train.jsonl", rows)
    registry = Registry()
    registry.load_catalog(toy_catalog)
    result = build(BuildConfig(out=tmp_path / "o", mix=MixConfig(heldout=("toy_nli",)),
                               recipe=Recipe("t", submixtures=(Submixture("m", task_cap=0),))), registry=registry)
    m = result.manifest
    assert m["decontaminated"] == {"total": 10, "per_task": {"sent_a": 10}}
    assert m["tasks"]["sent_a"]["decontaminated"] == 10 and m["tasks"]["sent_a"]["rows"] == 90
    texts = [r["inputs"] for r in train_rows(result.out)]
    assert not any("eval sentence number" in t.lower() for t in texts)


def test_ngram_decontamination(toy_catalog, tmp_path):
    rows = [{"text": f"unrelated words {i}", "label": 0} for i in range(50)]
    rows[0] = {"text": "prefix nli_a eval sentence number 3 suffix", "label": 0}  # shares a 4-gram with eval text
    write_jsonl(toy_catalog / "data" / "sent_a_train.jsonl", rows)
    registry = Registry()
    registry.load_catalog(toy_catalog)
    r = Recipe("t", submixtures=(Submixture("m", task_cap=0),), decontaminate_ngram=4)
    m = build(BuildConfig(out=tmp_path / "o", mix=MixConfig(heldout=("toy_nli",)), recipe=r), registry=registry).manifest
    assert m["decontaminated"]["per_task"] == {"sent_a": 1}
