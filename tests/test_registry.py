import pytest

from flanbuild.errors import FlanbuildError
from flanbuild.catalog.registry import Registry, builtin_catalog_dir
from flanbuild.catalog.tasks import Source, Task
from flanbuild.catalog.templates import Template
from conftest import memory_registry, write


def test_toy_catalog_loads(toy_registry):
    assert sorted(toy_registry.tasks) == ["gen_a", "nli_a", "nli_b", "para_a", "sent_a", "sent_b"]
    assert toy_registry.clusters["toy_nli"].also_remove == ("toy_para",)
    task = toy_registry.task("sent_a")
    assert [t.id for t in task.templates] == [1, 2, 3, 4]
    assert [t.inverted for t in task.templates] == [False, False, False, True]
    assert task.metric == "accuracy" and toy_registry.task("gen_a").metric == "rouge"


def test_catalog_overrides_tasks_and_templates(toy_catalog, tmp_path):
    extra = tmp_path / "extra"
    write(extra / "templates" / "sent_a.yaml", "task: sent_a\ntemplates:\n  - {id: 9, input: 'Say {{text}}', target: '{{answer}}'}\n")
    registry = Registry()
    registry.load_catalog(toy_catalog)
    with pytest.raises(FlanbuildError, match="already defined.*override: true"):  # never silently replaced
        registry.load_catalog(extra)
    write(extra / "templates" / "sent_a.yaml", "task: sent_a\noverride: true\n"
          "templates:\n  - {id: 9, input: 'Say {{text}}', target: '{{answer}}'}\n")
    registry.load_catalog(extra)
    assert [t.id for t in registry.task("sent_a").templates] == [9]
    assert [(o["kind"], o["name"]) for o in registry.overrides] == [("templates", "sent_a")]


def test_python_api_registers_task_and_cluster():
    registry = Registry()
    registry.register_cluster("qa", title="Question answering")
    task = Task(name="my_qa", cluster="qa", source=Source(files={"train": "/x.jsonl"}), fields={"q": "question"},
                type="generation", answer="answer")
    registry.register_task(task, [Template(1, "Q: {{q}}", "{{answer}}")])
    assert registry.task("my_qa").templates[0].id == 1
    with pytest.raises(FlanbuildError, match="unknown cluster"):
        registry.register_task(Task(name="x", cluster="nope", source=Source(files={"train": "/x"}),
                                    fields={"q": "q"}, type="generation", answer="a"), [Template(1, "{{q}}", "{{answer}}")])
    with pytest.raises(FlanbuildError, match="unknown field"):
        registry.register_task(task, [Template(1, "Q: {{question}}", "{{answer}}")])
    with pytest.raises(FlanbuildError, match="unknown field.*options_block"):
        registry.register_task(task, [Template(1, "Q: {{q}} {{options_block}}", "{{answer}}")])


def _card(tmp_path, body, templates="task: t\ntemplates:\n  - {id: 1, input: '{{text}}', target: '{{answer}}'}\n"):
    write(tmp_path / "c" / "tasks" / "clusters.yaml", "clusters:\n  cl: {}\n")
    write(tmp_path / "c" / "tasks" / "t.yaml", body)
    write(tmp_path / "c" / "templates" / "t.yaml", templates)
    registry = Registry()
    registry.load_catalog(tmp_path / "c")
    return registry


GOOD = "name: t\ncluster: cl\nsource: {files: {train: a.jsonl}}\nfields: {text: text}\ntype: generation\nanswer: out\n"


@pytest.mark.parametrize("body,match", [
    (GOOD.replace("cluster: cl", "cluster: nope"), "unknown cluster 'nope'"),
    (GOOD + "colour: red\n", "unknown card key 'colour'"),
    (GOOD.replace("name: t", "name: T!"), "must match"),
    (GOOD.replace("type: generation", "type: ranking"), "classification or generation"),
    (GOOD.replace("answer: out", "answer: 'out +'"), "invalid expression"),
    (GOOD.replace("fields: {text: text}", "fields: {answer: text}"), "reserved"),
    (GOOD + "options: [a, b]\n", "generation task has no options"),
    (GOOD.replace("type: generation", "type: classification") + "options: [a, a]\n", "distinct"),
    (GOOD.replace("source: {files: {train: a.jsonl}}", "source: {hub: x/y}"), "needs 'splits'"),
    (GOOD + "metric: vibes\n", "unknown metric"),
    (GOOD.replace("fields: {text: text}\n", ""), "needs 'fields'"),
])
def test_bad_cards(tmp_path, body, match):
    with pytest.raises(FlanbuildError, match=match) as e:
        _card(tmp_path, body)
    assert "t.yaml" in str(e.value)


def test_card_error_has_line_number(tmp_path):
    with pytest.raises(FlanbuildError, match=r"t\.yaml:7: unknown card key"):
        _card(tmp_path, GOOD + "colour: red\n")


def test_missing_templates_file(tmp_path):
    write(tmp_path / "c" / "tasks" / "clusters.yaml", "clusters:\n  cl: {}\n")
    write(tmp_path / "c" / "tasks" / "t.yaml", GOOD)
    (tmp_path / "c" / "templates").mkdir()
    with pytest.raises(FlanbuildError, match="no templates file"):
        Registry().load_catalog(tmp_path / "c")


def test_builtin_catalog_found_from_checkout():
    d = builtin_catalog_dir()
    assert (d / "tasks" / "clusters.yaml").is_file() and (d / "templates").is_dir()


def test_in_memory_source_builds(tmp_path):
    from flanbuild.builder import BuildConfig, build
    from flanbuild.pipeline.mixer import MixConfig

    registry = memory_registry(30)
    m = build(BuildConfig(out=tmp_path / "o", mix=MixConfig(heldout=("held",))), registry=registry).manifest
    assert m["tasks"]["mem_qa"]["rows"] == 30 and m["tasks"]["mem_qa"]["source"] == "memory:mem_qa/train"
    assert m["tasks"]["mem_held"]["role"] == "eval"
