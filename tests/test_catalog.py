"""The shipped FLAN catalog: complete, linted, and true to the real data where the mirror has it."""

import re

import pytest

from flanbuild.builder import load_registry
from flanbuild.cli.data_commands import catalog_markdown
from flanbuild.lint import lint
from conftest import MIRROR, REPO

# The FLAN 2021 datasets (Wei et al., 2021, figure 3) -> flanbuild task names, by cluster.
FLAN_2021 = {
    "nli": {"anli": ["anli_r1", "anli_r2", "anli_r3"], "cb": ["super_glue_cb"],
            "mnli": ["mnli_matched", "mnli_mismatched"], "qnli": ["glue_qnli"], "rte": ["glue_rte", "super_glue_rte"],
            "snli": ["snli"], "wnli": ["glue_wnli"]},
    "reading_comprehension": {"boolq": ["boolq", "super_glue_boolq"], "drop": ["drop"], "multirc": ["super_glue_multirc"],
                              "openbookqa": ["openbookqa"], "squad": ["squad_v1", "squad_v2"]},
    "reading_comprehension_commonsense": {"cosmos_qa": ["cosmos_qa"], "record": ["super_glue_record"]},
    "closed_book_qa": {"arc": ["arc_easy", "arc_challenge"], "nq": ["nq_open"], "trivia_qa": ["trivia_qa"]},
    "commonsense": {"copa": ["super_glue_copa"], "hellaswag": ["hellaswag"], "piqa": ["piqa"], "story_cloze": ["story_cloze"]},
    "coreference": {"dpr": ["dpr"], "winogrande": ["winogrande"], "wsc273": ["wsc273"]},
    "paraphrase": {"mrpc": ["glue_mrpc"], "qqp": ["glue_qqp"], "paws": ["paws"], "stsb": ["glue_stsb"]},
    "sentiment": {"imdb": ["imdb"], "sentiment140": ["sentiment140"], "sst2": ["glue_sst2"], "yelp": ["yelp_polarity"]},
    "struct_to_text": {"common_gen": ["common_gen"], "dart": ["dart"], "e2e": ["e2e_nlg"], "web_nlg": ["web_nlg"]},
    "translation": {"wmt14_enfr": ["wmt14_enfr"], "wmt16_ende": ["wmt16_ende"], "wmt16_encs": ["wmt16_encs"],
                    "wmt16_enfi": ["wmt16_enfi"], "wmt16_enro": ["wmt16_enro"], "wmt16_enru": ["wmt16_enru"],
                    "wmt16_entr": ["wmt16_entr"],
                    # the paper's one ParaCrawl entry covers its three pairs
                    "paracrawl": ["paracrawl_enes", "paracrawl_ende", "paracrawl_enfr"]},
    "summarization": {"aeslc": ["aeslc"], "ag_news": ["ag_news"], "cnn_dailymail": ["cnn_dailymail"],
                      "gigaword": ["gigaword"], "multi_news": ["multi_news"], "newsroom": ["newsroom"],
                      "opinion_abstracts_idebate": ["opinion_abstracts_idebate"],
                      "opinion_abstracts_rotten_tomatoes": ["opinion_abstracts_rotten_tomatoes"],
                      "samsum": ["samsum"], "wiki_lingua": ["wiki_lingua_en"], "xsum": ["xsum"]},
    "misc": {"coqa": ["coqa"], "quac": ["quac"], "trec": ["trec"], "wic": ["super_glue_wic"], "cola": ["glue_cola"],
             "math": ["math_dataset"], "fix_punct": ["fix_punct"]},
}
COT = ["gsm8k", "aqua_rat", "strategyqa"]
# Tasks with fewer than 10 templates, and why (documented exceptions).
FEW_TEMPLATES = {
    "tweet_eval_hate": "no inverted templates: they would ask the model to write hate speech",
    "tweet_eval_offensive": "no inverted templates: they would ask the model to write offensive posts",
}


@pytest.fixture(scope="module")
def registry():
    return load_registry()


def test_all_62_flan_datasets_in_12_clusters_plus_cot_and_dialog(registry):
    assert sum(len(v) for v in FLAN_2021.values()) == 62
    for cluster, datasets in FLAN_2021.items():
        for dataset, names in datasets.items():
            for name in names:
                assert name in registry.tasks, f"{dataset}: task {name} missing"
                assert registry.tasks[name].cluster == cluster, name
    for name in COT:
        assert registry.tasks[name].cluster == "chain_of_thought"
    for name in ("qrecc", "wiki_dialog"):  # Flan 2022's Dialog submixture
        assert registry.tasks[name].cluster == "dialog"
    assert len({t.cluster for t in registry.tasks.values()}) == 14


def test_templates_per_task(registry):
    inverted = 0
    for name, task in registry.tasks.items():
        assert len(task.templates) >= 10 or name in FEW_TEMPLATES, f"{name}: {len(task.templates)} templates"
        assert sum(t.inverted for t in task.templates) <= 3, name
        inverted += any(t.inverted for t in task.templates)
        assert task.features, f"{name}: card declares no features"
        assert task.description and (task.source.hub or task.source.files), name
    assert inverted >= 0.8 * len(registry.tasks)  # most tasks have a turned-around template


def test_whole_catalog_lints_clean(registry):
    data_dirs = [MIRROR] if MIRROR.is_dir() else []
    problems, n_tasks, renders = lint(registry, None, data_dirs)
    assert not problems, "\n".join(map(str, problems[:30]))
    assert n_tasks == len(registry.tasks) and renders > 20 * n_tasks


def test_declared_features_match_every_mirror_split(registry, mirror):
    from flanbuild.catalog import schema
    from flanbuild.sources.loader import find_in_mirror, features_of
    import pyarrow.parquet as pq

    checked = 0
    for task in registry.tasks.values():
        src = task.source
        for split in set(src.splits.values()):
            for path in find_in_mirror(mirror, src.hub or "", src.config, split):
                assert schema.diff(task.features, features_of(pq.read_schema(path))) == [], f"{task.name}: {path}"
                checked += 1
    assert checked >= 40


def test_lint_catches_a_template_that_ignores_its_input(registry):
    from dataclasses import replace
    from flanbuild.lint import lint_task
    from flanbuild.catalog.templates import Template

    task = registry.task("glue_sst2")
    broken = replace(task, templates=task.templates + (Template(99, "Is this positive? {{options_block}}", "{{answer}}"),
                                                       Template(98, "Review: {{sentence}} }}", "{{answer}}")))
    messages = [p.message for p in lint_task(broken)[0]]
    assert any("template 99" in m and "ignores its input" in m for m in messages), messages
    assert any("template 98" in m and "stray" in m for m in messages), messages


def test_readme_catalog_table_is_current(registry):
    """The README table depends only on the catalog, never on what a local mirror happens to hold."""
    readme = (REPO / "README.md").read_text()
    match = re.search(r"<!-- catalog:start -->\n(.*?)\n<!-- catalog:end -->", readme, re.S)
    assert match, "README.md has no catalog table"
    expected = catalog_markdown([t for _, t in sorted(registry.tasks.items())])
    assert match.group(1).strip() == expected.strip(), "regenerate: flanbuild tasks --markdown"


def test_catalog_markdown_mirror_column(registry, tmp_path):
    task = registry.task("glue_rte")
    (tmp_path / task.source.hub / task.source.config).mkdir(parents=True)
    (tmp_path / task.source.hub / task.source.config / f"{task.source.splits['train']}.parquet").write_bytes(b"")
    table = catalog_markdown([task], [tmp_path])
    assert table.splitlines()[0].endswith("offline mirror |")
    assert table.splitlines()[-1].endswith("| train |")


# --- FLAN's train[-N:] carves, one copy per dataset ---------------------------------------------------

def _carve_catalog(root, last=3):
    from conftest import TEMPLATES_GEN, write, write_jsonl

    write(root / "tasks" / "clusters.yaml", "clusters:\n  toy_gen:\n    title: Toy generation\n")
    write(root / "tasks" / "carve_a.yaml", f"""
        name: carve_a
        cluster: toy_gen
        source:
          files: {{train: data/carve_a.jsonl}}
          splits: {{train: train, eval: {{from: train, last: {last}}}}}
        fields:
          text: text
        type: generation
        answer: text
        """)
    write(root / "templates" / "carve_a.yaml", TEMPLATES_GEN.format(name="carve_a"))
    write_jsonl(root / "data" / "carve_a.jsonl", [{"text": f"row {i}"} for i in range(10)])


def test_eval_carve_is_the_last_rows_and_training_never_sees_them(tmp_path):
    from flanbuild.catalog.registry import Registry
    from flanbuild.sources.loader import load_split, source_overlaps

    _carve_catalog(tmp_path)
    registry = Registry()
    registry.load_catalog(tmp_path)
    task = registry.task("carve_a")
    assert task.source.splits == {"train": "train[:-3]", "eval": "train[-3:]"}  # what mixture.json records
    train, evals = (load_split(task, role, []) for role in ("train", "eval"))
    rows = lambda split: [r["text"] for b in split.batches() for r in b.to_pylist()]  # noqa: E731
    assert rows(evals) == ["row 7", "row 8", "row 9"] and rows(train) == [f"row {i}" for i in range(7)]
    assert rows(load_split(task, "eval", [])) == rows(evals)  # deterministic
    # example ids stay distinct: carve_a/train[-3:]/0 is not carve_a/train[:-3]/0
    assert task.source.split_name("eval") != task.source.split_name("train")
    assert source_overlaps({"carve_a": (task, "train")}) == []


def test_bad_carve_is_rejected(tmp_path):
    from flanbuild.catalog.registry import Registry
    from flanbuild.errors import FlanbuildError

    _carve_catalog(tmp_path, last=0)
    with pytest.raises(FlanbuildError, match="carve"):
        Registry().load_catalog(tmp_path)


def test_duplicate_sources_are_named(registry):
    from flanbuild.sources.loader import source_overlaps

    t = registry.tasks
    msgs = source_overlaps({"glue_rte": (t["glue_rte"], "train"), "super_glue_rte": (t["super_glue_rte"], "train")})
    assert len(msgs) == 1 and "glue_rte" in msgs[0] and "super_glue_rte" in msgs[0]
    msgs = source_overlaps({"mnli_matched": (t["mnli_matched"], "train"), "mnli_mismatched": (t["mnli_mismatched"], "train")})
    assert len(msgs) == 1 and "nyu-mll/glue/mnli/train" in msgs[0]
    assert source_overlaps({"mnli_matched": (t["mnli_matched"], "eval"), "mnli_mismatched": (t["mnli_mismatched"], "eval")}) == []


@pytest.mark.parametrize("recipe_name", ["flan2021", "flan2022"])
def test_flan_recipes_use_one_copy_of_each_dataset(registry, recipe_name):
    """The default mixture (NLI held out, FLAN's extra removals) reads no source row twice."""
    from flanbuild.catalog.recipes import load_recipe
    from flanbuild.sources.loader import source_overlaps

    recipe = load_recipe(recipe_name)
    held = set(recipe.heldout)
    removed = {c for h in held for c in registry.clusters[h].also_remove} - held
    selected = {}
    for name, task in registry.tasks.items():
        if any(s.selects(name, task.cluster, task.provider) for s in recipe.submixtures) and task.cluster not in removed:
            selected[name] = (task, "eval" if task.cluster in held else "train")
    overlaps = source_overlaps(selected)
    if recipe_name == "flan2022":  # fix_punct reformats GSM8K questions that the CoT submixture also trains on
        overlaps = [m for m in overlaps if "fix_punct" not in m]
    assert overlaps == []
    for dup in ("glue_rte", "super_glue_boolq", "wsc273", "wsc285"):
        assert dup not in selected and registry.tasks[dup].duplicates
