import numpy as np
import pytest

from flanbuild.errors import FlanbuildError
from flanbuild.pipeline.examples import ExampleMapper, valid_indices
from flanbuild.pipeline.render import RenderJob, render_rows
from flanbuild.sources.loader import load_split
from flanbuild.catalog.tasks import Source, Task
from flanbuild.catalog.templates import Template


def cls_task(**kw):
    base = dict(name="t", cluster="c", source=Source(files={"train": "/x.jsonl"}), fields={"text": "text"},
                type="classification", answer="label", templates=(Template(1, "{{text}} {{options_block}}", "{{answer}}"),))
    base.update(kw)
    return Task(**base)


def test_classlabel_names_become_options():
    task = cls_task()
    mapper = ExampleMapper(task, {"text": "string", "label": {"class_label": ["neg", "pos"]}})
    ex = mapper({"text": "good", "label": 1}, "row 0")
    assert ex.options == ["neg", "pos"] and ex.context["answer"] == "pos" and ex.references == ["pos"]


def test_per_row_options_and_text_answer():
    task = cls_task(options="choices.text", answer="choices.text[choices.label.index(key)]")
    ex = ExampleMapper(task, None)({"text": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "key": "B"}, "row 3")
    assert ex.options == ["a", "b"] and ex.context["answer"] == "b"


def test_answer_outside_options_is_a_clear_error():
    mapper = ExampleMapper(cls_task(options=("no", "yes")), None)
    with pytest.raises(FlanbuildError, match=r"task t: answer 5 on row 9 is outside the 2 options"):
        mapper({"text": "x", "label": 5}, "row 9")


def test_classification_without_options_is_an_error():
    with pytest.raises(FlanbuildError, match="has no options"):
        ExampleMapper(cls_task(), {"text": "string", "label": "int64"})


def test_field_expression_error_names_field():
    task = cls_task(fields={"text": "text.split(' ')[3]"}, options=("a", "b"))
    with pytest.raises(FlanbuildError, match=r"field 'text' is undefined on row 0"):
        ExampleMapper(task, None)({"text": "one two", "label": 0}, "row 0")


def test_field_expression_exception_names_field():
    task = cls_task(fields={"text": "text + 1"}, options=("a", "b"))
    with pytest.raises(FlanbuildError, match=r"field 'text' failed on row 2: TypeError"):
        ExampleMapper(task, None)({"text": "one two", "label": 0}, "row 2")


def test_generation_references_first_is_target_and_empty_drops():
    task = cls_task(type="generation", answer="refs", templates=(Template(1, "{{text}}", "{{answer}}"),))
    mapper = ExampleMapper(task, None)
    ex = mapper({"text": "x", "refs": ["r1", "r2"]}, "row 0")
    assert ex.context["answer"] == "r1" and ex.references == ["r1", "r2"]
    assert mapper({"text": "x", "refs": []}, "row 1") is None


def test_training_render_one_seeded_template_per_example(toy_registry):
    task = toy_registry.task("sent_a")
    data = load_split(task, "train", [])
    idx = valid_indices(task, data)
    rows = list(render_rows(RenderJob(task, "train", idx, seed=1, task_source="mix"), data))
    again = list(render_rows(RenderJob(task, "train", idx, seed=1, task_source="mix"), data))
    other = list(render_rows(RenderJob(task, "train", idx, seed=2, task_source="mix"), data))
    assert rows == again and rows != other
    assert len(rows) == 300 and {r["template_id"] for r in rows} == {1, 2, 3, 4}
    by_id = {r["example_id"]: r for r in rows}
    assert set(by_id) == {f"sent_a/train/{i}" for i in range(300)}
    inverted = [r for r in rows if r["template_id"] == 4]
    assert all(r["options"] == [] and r["template_type"] == "zs_noopt" for r in inverted)
    assert all(r["template_type"] == "zs_opt" and r["options"] == ["no", "yes"] for r in rows if r["template_id"] in (1, 2))
    assert all(r["template_type"] == "zs_noopt" and r["options"] == ["no", "yes"] for r in rows if r["template_id"] == 3)


def test_repeated_indices_get_fresh_template_draws(toy_registry):
    task = toy_registry.task("gen_a")
    data = load_split(task, "train", [])
    idx = np.repeat(np.arange(10), 6)
    rows = list(render_rows(RenderJob(task, "train", idx, seed=0, task_source="m"), data))
    assert len(rows) == 60
    per_example = {}
    for r in rows:
        per_example.setdefault(r["example_id"], set()).add(r["template_id"])
    assert any(len(s) == 2 for s in per_example.values())  # 6 draws from 2 templates: not all identical


def test_eval_renders_every_template(toy_registry):
    task = toy_registry.task("nli_a")
    data = load_split(task, "eval", [])
    rows = list(render_rows(RenderJob(task, "eval", valid_indices(task, data), 0, "m", all_templates=True), data))
    assert len(rows) == 30 * 4
    assert [r["template_id"] for r in rows[:4]] == [1, 2, 3, 4]
    assert rows[0]["example_id"] == "nli_a/eval/0"
