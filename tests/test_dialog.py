"""Flan 2022's Dialog submixture: QReCC and WikiDialog cards (FLAN's next-turn rules), the flan2022 recipe's
fifth submixture, and a build without their data that says which tasks are missing and why."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from flanbuild.builder import BuildConfig, build
from flanbuild.catalog.recipes import load_recipe
from flanbuild.catalog.registry import default_registry
from flanbuild.pipeline.examples import ExampleMapper
from flanbuild.pipeline.mixer import MixConfig


def mapped(task, row):
    return ExampleMapper(task, task.features)(row, "test row")


def test_dialog_cards_follow_flans_next_turn_rules():
    registry = default_registry()
    qrecc, wiki = registry.tasks["qrecc"], registry.tasks["wiki_dialog"]
    assert qrecc.cluster == wiki.cluster == "dialog"
    assert sum(t.inverted for t in qrecc.templates) == 3 and len(qrecc.templates) >= 10
    row = {"Context": [f"turn {i}" for i in range(12)], "Question": "question 7", "Rewrite": "", "Answer": "answer 7",
           "Answer_URL": "", "Conversation_no": 3, "Turn_no": 7, "Conversation_source": "quac"}
    example = mapped(qrecc, row)
    # FLAN's format_dialog: "DIALOG:\n" + turns joined by "\n- " + "\n- "
    assert example.context["dialog"] == "DIALOG:\n" + "\n- ".join([*row["Context"], "question 7"]) + "\n- "
    assert example.context["answer"] == "answer 7"
    # FLAN's filter_qrecc keeps turns after the sixth
    assert ExampleMapper(qrecc, qrecc.features).keep(row, "r") and not ExampleMapper(qrecc, qrecc.features).keep({**row, "Turn_no": 6}, "r")
    # WikiDialog: the prompt utterance dropped, cut before a writer turn (an odd index of utterances[1:])
    utterances = ["prompt"] + [f"{'q' if i % 2 == 0 else 's'}{i // 2}" for i in range(10)]
    for passage_len in range(12):
        row = {"pid": "1", "title": "T", "passage": "x" * passage_len, "sentences": [], "utterances": utterances,
               "author_num": []}
        example = mapped(wiki, row)
        cut = 2 * (passage_len % 5) + 1
        assert example.context["dialog"] == "DIALOG:\n" + "\n- ".join(utterances[1:][:cut]) + "\n- "
        assert example.context["answer"] == utterances[1:][cut] and example.context["answer"].startswith("s")


def test_flan2022_without_dialog_data_names_the_missing_tasks(tmp_path):
    """No QReCC/WikiDialog data here (an empty mirror, the Hub offline): the build goes on with what it has and
    records why each Dialog task has no rows."""
    empty = tmp_path / "mirror"
    empty.mkdir()
    recipe = load_recipe("flan2022")
    registry = default_registry()
    config = BuildConfig(out=tmp_path / "out", recipe=recipe, data_dirs=[str(empty)],
                         tasks=("qrecc", "wiki_dialog", "glue_wnli"), mix=MixConfig(heldout=("sentiment",)),
                         allow_empty_split=True, plots=False)
    build(config, registry=registry)
    manifest = json.loads((tmp_path / "out" / "mixture.json").read_text())
    assert {"qrecc", "wiki_dialog"} <= set(manifest["skipped"])
    assert "svakulenk0/qrecc" in manifest["skipped"]["qrecc"]
    assert "dialog-inpainting" in manifest["skipped"]["wiki_dialog"]  # the card's manual steps are in the reason
    assert "glue_wnli" in manifest["tasks"]  # the other submixtures still build (here from the embedded sample)


def test_dialog_tasks_build_from_a_mirror(tmp_path):
    """With the data in a mirror (as the cards' manual steps lay it out), both Dialog tasks build rows in the
    dialog submixture."""
    mirror = tmp_path / "mirror"
    qrecc_dir = mirror / "svakulenk0" / "qrecc" / "default"
    wiki_dir = mirror / "djaym7" / "wiki_dialog" / "OQ"
    qrecc_dir.mkdir(parents=True)
    wiki_dir.mkdir(parents=True)
    qrecc_rows = [{"Context": [f"c{n} turn {i}" for i in range(2 * (t - 1))], "Question": f"c{n} question {t}",
                   "Rewrite": "", "Answer": f"c{n} answer {t}", "Answer_URL": "", "Conversation_no": n, "Turn_no": t,
                   "Conversation_source": "quac"} for n in range(6) for t in range(1, 11)]
    pq.write_table(pa.Table.from_pylist(qrecc_rows), qrecc_dir / "train.parquet")
    wiki_rows = [{"pid": f"{n}@0", "title": f"Title {n}", "passage": "p" * (n + 3), "sentences": ["s"],
                  "utterances": ["prompt"] + [f"d{n} u{i}" for i in range(8)], "author_num": [0] * 9} for n in range(40)]
    pq.write_table(pa.Table.from_pylist(wiki_rows[:25]), wiki_dir / "train-00000.parquet")
    pq.write_table(pa.Table.from_pylist(wiki_rows[25:]), wiki_dir / "train-00001.parquet")
    config = BuildConfig(out=tmp_path / "out", recipe=load_recipe("flan2022"), data_dirs=[str(mirror)],
                         tasks=("qrecc", "wiki_dialog"), mix=MixConfig(heldout=("nli",)), allow_empty_split=True,
                         plots=False)
    build(config, registry=default_registry())
    manifest = json.loads((tmp_path / "out" / "mixture.json").read_text())
    for name, examples in (("qrecc", 6 * 4), ("wiki_dialog", 40)):
        record = manifest["tasks"][name]
        assert record["submixture"] == "dialog" and record["cluster"] == "dialog"
        assert record["examples"] == examples and record["rows"] > 0
    assert manifest["tasks"]["wiki_dialog"]["read"].startswith("all 40 rows of train")
