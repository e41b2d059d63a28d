import pytest

from flanbuild.errors import FlanbuildError
from flanbuild.pipeline.examples import Example
from flanbuild.pipeline.render import render_template
from flanbuild.catalog.tasks import Source, Task
from flanbuild.pipeline.layouts import FLAN
from flanbuild.catalog.templates import Template, load_templates_file
from flanbuild.sandbox.environment import or_join
from conftest import write


def make_task(templates, kind="classification"):
    return Task(name="t", cluster="c", source=Source(files={"train": "x.jsonl"}), fields={"text": "text"},
                type=kind, answer="label", options=("no", "yes") if kind == "classification" else None,
                templates=tuple(templates))


def example(text="hello"):
    return Example({"text": text, "answer": "yes", "options": ["no", "yes"]}, ["no", "yes"], ["yes"])


def test_options_block_and_or_join():
    assert FLAN.render(["yes", "no"]) == "OPTIONS:\n- yes\n- no"
    assert or_join(["a", "b", "c"]) == "a, b or c"
    assert or_join(["a", "b"], "and") == "a and b"
    assert or_join(["a"]) == "a"


def test_render_with_and_without_options():
    t = Template(1, "{{text}}\n\n{{options_block}}", "{{answer}}")
    task = make_task([t])
    assert t.shows_options
    assert render_template(task, t, example(), True) == ("hello\n\nOPTIONS:\n- no\n- yes", "yes")
    assert render_template(task, t, example(), False) == ("hello", "yes")


def test_strict_undefined_names_template():
    t = Template(7, "{{txet}}", "{{answer}}", origin="templates/t.yaml:3")
    with pytest.raises(FlanbuildError) as e:
        render_template(make_task([t]), t, example(), True)
    assert "template 7" in str(e.value) and "txet" in str(e.value) and "templates/t.yaml:3" in str(e.value)


@pytest.mark.parametrize("payload", [
    "{{ text.__class__.__mro__ }}",
    "{{ ''.__class__.__base__.__subclasses__() }}",
    "{{ text | attr('__class__') }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ options.append('x') }}",
])
def test_sandbox_refuses_internals(payload):
    t = Template(3, payload, "{{answer}}")
    with pytest.raises(FlanbuildError, match="template 3"):
        render_template(make_task([t]), t, example(), True)


def test_templates_file_errors_have_line_numbers(tmp_path):
    path = write(tmp_path / "templates" / "t.yaml", """
        task: t
        templates:
          - id: 1
            input: "ok {{text}}"
            target: "{{answer}}"
          - id: 2
            input: "broken {{text"
            target: "{{answer}}"
    """)
    with pytest.raises(FlanbuildError) as e:
        load_templates_file(path)
    assert "t.yaml:7: task t, template 2 (input)" in str(e.value) and "syntax" in str(e.value)


@pytest.mark.parametrize("body,match", [
    ("  - id: 1\n    input: a\n    target: b\n  - id: 1\n    input: c\n    target: d\n", "duplicate template id 1"),
    ("  - id: 1\n    input: a\n    target: ''\n", "non-empty 'target'"),
    ("  - id: 1\n    input: a\n    target: b\n    colour: red\n", "unknown template key"),
    ("  - id: x\n    input: a\n    target: b\n", "must be a non-negative integer"),
])
def test_templates_file_validation(tmp_path, body, match):
    path = write(tmp_path / "t.yaml", "task: t\ntemplates:\n" + body)
    with pytest.raises(FlanbuildError, match=match):
        load_templates_file(path)


def test_templates_file_task_must_match_name(tmp_path):
    path = write(tmp_path / "t.yaml", "task: other\ntemplates:\n  - {id: 1, input: a, target: b}\n")
    with pytest.raises(FlanbuildError, match="must equal the file name"):
        load_templates_file(path)


@pytest.mark.parametrize("source", [
    "{{ a }} {{ b | upper }} {{ c.d[e] }} {{ f if g else 'h' }} {{ i is defined }} {{ range(3) | list }}",
    "{% for o in options %}{{ o }}{{ loop.index }}{% endfor %}{{ o }}",  # a loop: Jinja's analysis
    "{% set x = y %}{{ x }}{{ z }}",
    "{% if a %}{{ b }}{% else %}{{ c | default('d') }}{% endif %}",
])
def test_free_variables_equal_jinjas_analysis(source):
    """The shortcut for templates that declare no name gives Jinja's own answer (and every built-in
    template agrees too)."""
    import jinja2.meta

    from flanbuild.catalog.registry import default_registry
    from flanbuild.sandbox.environment import parse, variables

    for src in [source] + [s for t in default_registry().tasks.values() for tp in t.templates for s in (tp.input, tp.target)]:
        assert variables(src) == frozenset(jinja2.meta.find_undeclared_variables(parse(src))), src
