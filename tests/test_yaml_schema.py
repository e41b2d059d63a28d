import pytest

from flanbuild.catalog import schema
from flanbuild.errors import FlanbuildError
from flanbuild.catalog.yamlio import load_yaml
from conftest import write


def test_yaml_error_names_file_and_line(tmp_path):
    path = write(tmp_path / "bad.yaml", "a: 1\nb: [1, 2\nc: 3\n")
    with pytest.raises(FlanbuildError) as e:
        load_yaml(path)
    assert str(path) in str(e.value) and ":3" in str(e.value)
    assert "\n" not in str(e.value)


def test_yaml_duplicate_key_and_line_numbers(tmp_path):
    doc = load_yaml(write(tmp_path / "ok.yaml", "a: 1\nb:\n  c: 2\n"))
    assert doc.line_of("b") == 2 and doc["b"].line_of("c") == 3
    with pytest.raises(FlanbuildError, match="duplicate key 'a'"):
        load_yaml(write(tmp_path / "dup.yaml", "a: 1\na: 2\n"))


def test_yaml_is_safe_and_utf8_checked(tmp_path):
    with pytest.raises(FlanbuildError, match="invalid YAML"):
        load_yaml(write(tmp_path / "evil.yaml", "a: !!python/object/apply:os.system ['echo hi']\n"))
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(FlanbuildError, match="not UTF-8"):
        load_yaml(bad)


def test_features_parse_and_diff():
    declared = schema.parse_features(
        {"text": "string", "label": {"class_label": ["neg", "pos"]}, "choices": {"text": ["string"]}}, "card")
    hf = {"text": {"dtype": "string", "_type": "Value"},
          "label": {"names": ["neg", "pos"], "_type": "ClassLabel"},
          "choices": {"text": {"feature": {"dtype": "string", "_type": "Value"}, "_type": "List"}}}
    assert schema.diff(declared, schema.from_hf(hf)) == []
    hf["label"]["names"] = ["negative", "positive"]
    hf["extra"] = {"dtype": "int32", "_type": "Value"}
    problems = schema.diff(declared, schema.from_hf(hf))
    assert any("'extra'" in p for p in problems) and any("'label'" in p for p in problems)
    assert schema.class_names(declared, "label") == ["neg", "pos"]


def test_legacy_sequence_of_dict_is_struct_of_lists():
    hf = {"answers": {"feature": {"text": {"dtype": "string", "_type": "Value"}}, "_type": "Sequence"}}
    assert schema.from_hf(hf) == {"answers": {"text": ["string"]}}


@pytest.mark.parametrize("bad", [{"x": "str"}, {"x": ["string", "int32"]}, {"x": {"class_label": []}}, {}])
def test_bad_features_rejected(bad):
    with pytest.raises(FlanbuildError):
        schema.parse_features(bad, "card")


def test_synthesised_rows_follow_schema_and_differ():
    feats = {"t": "string", "l": {"class_label": ["a", "b", "c"]}, "xs": ["int32"], "s": {"a": ["string"], "b": ["string"]}}
    rows = [schema.synthesise(feats, i) for i in range(4)]
    assert rows[0] == schema.synthesise(feats, 0)  # deterministic
    assert len({r["t"] for r in rows}) == 4
    for r in rows:
        assert 0 <= r["l"] < 3 and all(isinstance(x, int) for x in r["xs"])
        assert len(r["s"]["a"]) == len(r["s"]["b"])  # a hub Sequence of dicts stays aligned
