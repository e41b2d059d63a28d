"""Incremental rebuilds: an unchanged rebuild touches nothing; any change that decides OUT rebuilds it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import toy_build


def _registry(catalog: Path):
    from flanbuild.catalog.registry import Registry

    registry = Registry()
    registry.load_catalog(catalog)
    return registry


def _stamp(out: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(out).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in sorted(out.rglob("*")) if p.is_file()}


def test_unchanged_rebuild_is_up_to_date_and_touches_nothing(toy_catalog, tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    first = toy_build(_registry(toy_catalog), out, cache_dir=cache)
    assert first.shards > 0 and first.manifest["build_key"]
    before = _stamp(out)
    again = toy_build(_registry(toy_catalog), out, cache_dir=cache)
    assert again.shards == 0 and again.cached_shards == 0  # nothing rendered, not even looked up
    assert _stamp(out) == before  # not one file rewritten or replaced
    assert again.manifest == json.loads((out / "mixture.json").read_text())


def test_a_changed_template_or_config_rebuilds(toy_catalog, tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    first = toy_build(_registry(toy_catalog), out, cache_dir=cache)
    seeded = toy_build(_registry(toy_catalog), out, cache_dir=cache, seed=1)  # config changes: rebuilt
    assert seeded.shards > 0 and seeded.manifest["build_key"] != first.manifest["build_key"]
    template = toy_catalog / "templates" / "sent_a.yaml"
    template.write_text(template.read_text().replace("Label this:", "Label this, please:"))
    edited = toy_build(_registry(toy_catalog), out, cache_dir=cache, seed=1)
    assert edited.shards > 0 and edited.cached_shards < edited.shards  # the edited task re-rendered, others cached
    assert edited.manifest["build_key"] not in (first.manifest["build_key"], seeded.manifest["build_key"])
    assert json.loads((out / "mixture.json").read_text())["build_key"] == edited.manifest["build_key"]


def test_damaged_or_incomplete_output_is_rebuilt(toy_catalog, tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    first = toy_build(_registry(toy_catalog), out, cache_dir=cache)
    (out / "README.md").unlink()  # the card is part of a build: its absence means OUT is not this build
    again = toy_build(_registry(toy_catalog), out, cache_dir=cache)
    assert again.shards > 0 and (out / "README.md").is_file()
    assert again.manifest["fingerprint"] == first.manifest["fingerprint"]


def test_without_the_cache_every_build_renders(toy_catalog, tmp_path):
    out = tmp_path / "out"
    toy_build(_registry(toy_catalog), out, use_cache=False)
    again = toy_build(_registry(toy_catalog), out, use_cache=False)
    assert again.shards > 0 and "build_key" not in again.manifest


def _contaminating(toy_catalog: Path) -> None:
    """sent_a's template 1 renders exactly nli_a's eval inputs for some rows: decontamination removes them."""
    data = toy_catalog / "data" / "sent_a_train.jsonl"
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    for i in range(0, 40, 2):
        rows[i]["text"] = f"nli_a eval sentence number {i % 30}"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_decontamination_from_the_cache_gives_the_same_bytes(toy_catalog, tmp_path):
    _contaminating(toy_catalog)
    cold = toy_build(_registry(toy_catalog), tmp_path / "cold", use_cache=False)
    assert cold.manifest["decontaminated"]["total"] > 0
    cache = tmp_path / "cache"
    first = toy_build(_registry(toy_catalog), tmp_path / "a", cache_dir=cache)
    assert list((cache / "decontam").rglob("*.json"))  # per-task outcomes were stored
    template = toy_catalog / "templates" / "para_a.yaml"  # another task changes: sent_a's outcome is re-applied
    template.write_text(template.read_text().replace("Label this:", "Label this, please:"))
    second = toy_build(_registry(toy_catalog), tmp_path / "b", cache_dir=cache)
    unedited = toy_build(_registry(toy_catalog), tmp_path / "c", use_cache=False)
    for built in (first,):
        assert built.manifest["fingerprint"] == cold.manifest["fingerprint"]
        assert built.manifest["decontaminated"] == cold.manifest["decontaminated"]
    assert second.manifest["fingerprint"] == unedited.manifest["fingerprint"]
    assert second.manifest["decontaminated"] == unedited.manifest["decontaminated"]
    assert second.manifest["tasks"] == unedited.manifest["tasks"]
    # the contaminated task itself changes: it is checked again against the cached eval index (sorted
    # inputs and reversals read back, suffix lookups for template 1), with the same removals
    template = toy_catalog / "templates" / "sent_a.yaml"
    template.write_text(template.read_text().replace("Answer {{", "Please answer {{"))
    third = toy_build(_registry(toy_catalog), tmp_path / "d", cache_dir=cache)
    fresh = toy_build(_registry(toy_catalog), tmp_path / "e", use_cache=False)
    assert third.manifest["decontaminated"] == fresh.manifest["decontaminated"]
    assert third.manifest["decontaminated"]["per_task"].get("sent_a", 0) > 0
    assert third.manifest["fingerprint"] == fresh.manifest["fingerprint"]


@pytest.mark.parametrize("ngram", [4, 0])
def test_decontamination_in_worker_processes_gives_the_same_bytes(toy_catalog, tmp_path, monkeypatch, ngram):
    """With the n-gram check (or, without it, when train rows outnumber the eval inputs enough), parts
    are checked in worker processes (each receives the eval index once): the same removals."""
    from dataclasses import replace

    from flanbuild import builder
    from flanbuild.catalog.recipes import Recipe
    from flanbuild.pipeline import engine

    _contaminating(toy_catalog)
    recipe = replace(Recipe(), decontaminate_ngram=ngram)
    one = toy_build(_registry(toy_catalog), tmp_path / "one", use_cache=False, workers=1, recipe=recipe)
    monkeypatch.setattr(engine, "SERIAL_BELOW", 0)
    monkeypatch.setattr(builder, "PARALLEL_CHECK_RATIO", 0)
    monkeypatch.setattr(builder, "PARALLEL_CHECK_ROWS", 0)
    calls = []
    real = engine.process_map
    monkeypatch.setattr(engine, "process_map",
                        lambda fn, *a, **k: calls.append(getattr(fn, "func", fn).__name__) or real(fn, *a, **k))
    two = toy_build(_registry(toy_catalog), tmp_path / "two", use_cache=False, workers=2, recipe=recipe)
    assert "check_part" in calls
    assert one.manifest["decontaminated"]["total"] > 0
    assert two.manifest["decontaminated"] == one.manifest["decontaminated"]
    assert two.manifest["fingerprint"] == one.manifest["fingerprint"]
    assert two.manifest["tasks"] == one.manifest["tasks"]


def test_a_rebuild_takes_unchanged_split_files_from_the_previous_output(toy_catalog, tmp_path):
    """After a training template changed, the eval files are the previous output's (the same inodes: not
    written again, their statistics from the cache) and the train files are new; the output, card
    included, is the one a build without the cache writes."""
    cache, out = tmp_path / "cache", tmp_path / "out"
    toy_build(_registry(toy_catalog), out, cache_dir=cache, plots=True)
    before = _stamp(out)
    template = toy_catalog / "templates" / "sent_a.yaml"  # a training task
    template.write_text(template.read_text().replace("Label this:", "Label this, please:"))
    rebuilt = toy_build(_registry(toy_catalog), out, cache_dir=cache, plots=True)
    after = _stamp(out)
    evals = [f for f in before if f.startswith("data/eval-")]
    assert evals and all(after[f][0] == before[f][0] for f in evals)
    assert all(after[f][0] != before[f][0] for f in before if f.startswith("data/train-"))
    fresh = toy_build(_registry(toy_catalog), tmp_path / "fresh", use_cache=False, plots=True)
    assert {k: v for k, v in rebuilt.manifest.items() if k != "build_key"} == fresh.manifest
    assert (out / "README.md").read_text() == (fresh.out / "README.md").read_text()


def test_a_reused_split_file_must_still_have_its_bytes(toy_catalog, tmp_path):
    """The cache names a file by its plan, but takes the previous file only if its bytes verify."""
    from flanbuild.output.reuse import FileCache

    cache, out = tmp_path / "cache", tmp_path / "out"
    toy_build(_registry(toy_catalog), out, cache_dir=cache)
    entries = sorted((cache / "files").rglob("*.json"))
    doc = json.loads(entries[0].read_text())
    rel, key = doc["file"]["path"], doc["key"]
    (tmp_path / "stage" / "data").mkdir(parents=True)
    assert FileCache(cache).reuse(key, out, tmp_path / "stage", rel, 0, None) is not None
    (tmp_path / "stage" / rel).unlink()
    data = bytearray((out / rel).read_bytes())
    data[len(data) // 2] ^= 1
    (out / rel).write_bytes(bytes(data))
    assert FileCache(cache).reuse(key, out, tmp_path / "stage", rel, 0, None) is None
    assert not (tmp_path / "stage" / rel).exists()
