"""Huge sources are read lazily: a card's ``source.max_rows: N`` reads the first N rows of each split in file
order (streamed from the Hub: nothing after them is pulled), the same rows from a mirror, and records the rule
in mixture.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flanbuild.catalog.registry import Registry
from flanbuild.errors import FlanbuildError
from flanbuild.sources import loader
from conftest import toy_build, write

HUGE_CARD = """
name: huge_gen
cluster: toy_gen
source:
  hub: someorg/huge_corpus
  config: default
  max_rows: {max_rows}
  splits: {{train: train, eval: {eval}}}
features: {{text: string, target: string}}
fields: {{text: text}}
type: generation
answer: target
"""

HUGE_TEMPLATES = """
task: huge_gen
templates:
  - {id: 1, input: 'Copy this: {{text}}', target: '{{answer}}'}
  - {id: 2, input: '{{text}} Repeat it.', target: '{{answer}}'}
"""


def huge_rows(split: str, n: int):
    return [{"text": f"{split} sentence number {i}", "target": f"{split} target {i}"} for i in range(n)]


@pytest.fixture
def stand_in_hub(monkeypatch):
    """datasets.load_dataset answers like the Hub for someorg/huge_corpus: streaming only, counting the rows pulled."""
    import datasets

    pulled: dict[str, int] = {}
    calls: list[dict] = []

    def load_dataset(path, name=None, *, split=None, revision=None, streaming=False, **kwargs):
        calls.append({"path": path, "name": name, "split": split, "revision": revision, "streaming": streaming})
        if not streaming:
            raise AssertionError("a max_rows source must not be downloaded whole")

        def gen():
            for row in huge_rows(split, 1_000_000):
                pulled[split] = pulled.get(split, 0) + 1
                yield row

        features = datasets.Features({"text": datasets.Value("string"), "target": datasets.Value("string")})
        return datasets.IterableDataset.from_generator(gen, features=features)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(loader, "hub_reachable", lambda *a, **k: True)
    offline = getattr(loader, "offline", None)
    if offline is not None and hasattr(offline, "is_offline"):
        monkeypatch.setattr(offline, "is_offline", lambda *a, **k: False)
    return pulled, calls


def huge_registry(catalog: Path, max_rows: int, eval_split: str = "test") -> Registry:
    write(catalog / "tasks" / "huge_gen.yaml", HUGE_CARD.format(max_rows=max_rows, eval=eval_split))
    write(catalog / "templates" / "huge_gen.yaml", HUGE_TEMPLATES)
    registry = Registry()
    registry.load_catalog(catalog)
    return registry


def test_max_rows_streams_only_the_first_rows_from_the_hub(toy_catalog, stand_in_hub):
    pulled, calls = stand_in_hub
    task = huge_registry(toy_catalog, 40).tasks["huge_gen"]
    data = loader.load_split(task, "train", [])
    assert pulled == {"train": 40}
    assert calls and all(c["streaming"] for c in calls) and calls[0]["path"] == "someorg/huge_corpus"
    assert data.num_rows == 40
    texts = [r["text"] for _, rows in data.rows(np.arange(40)) for r in rows]
    assert texts == [f"train sentence number {i}" for i in range(40)]
    assert data.read.startswith("first 40 rows of train in file order (source.max_rows: 40)")
    assert "streamed" in data.read


def test_max_rows_rule_is_recorded_in_mixture_json(toy_catalog, tmp_path, stand_in_hub):
    pulled, _ = stand_in_hub
    registry = huge_registry(toy_catalog, 30)
    toy_build(registry, tmp_path / "out", tasks=("huge_gen", "nli_a", "sent_a"))
    manifest = json.loads((tmp_path / "out" / "mixture.json").read_text())
    record = manifest["tasks"]["huge_gen"]
    assert record["source"] == "hub:someorg/huge_corpus/default/train"
    assert record["read"].startswith("first 30 rows of train in file order (source.max_rows: 30)")
    assert record["examples"] <= 30 and pulled["train"] == 30
    assert "read" not in manifest["tasks"]["sent_a"]  # a task that reads its whole split says nothing
    from flanbuild.output.manifest import load_manifest

    assert load_manifest(tmp_path / "out")["tasks"]["huge_gen"]["read"] == record["read"]


def test_max_rows_reads_the_same_rows_from_a_mirror_and_carves_inside_them(toy_catalog, tmp_path, monkeypatch):
    """A mirror holding the whole split gives the same first rows as the Hub; a carve (train[-N:]) is cut from
    them, so train and eval stay disjoint and nothing past max_rows is read."""
    mirror = tmp_path / "mirror"
    (mirror / "someorg" / "huge_corpus" / "default").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(huge_rows("train", 500)), mirror / "someorg" / "huge_corpus" / "default" / "train.parquet",
                   row_group_size=64)
    registry = huge_registry(toy_catalog, 100, eval_split="{from: train, last: 10}")
    task = registry.tasks["huge_gen"]
    train = loader.load_split(task, "train", [mirror], allow_hub=False)
    evals = loader.load_split(task, "eval", [mirror], allow_hub=False)

    train_text = [r["text"] for _, rows in train.rows(np.arange(train.num_rows)) for r in rows]
    eval_text = [r["text"] for _, rows in evals.rows(np.arange(evals.num_rows)) for r in rows]
    assert train_text == [f"train sentence number {i}" for i in range(90)]
    assert eval_text == [f"train sentence number {i}" for i in range(90, 100)]
    assert train.read == evals.read == "first 100 rows of train in file order (source.max_rows: 100)"
    assert [b.num_rows for b in train.batches()] and sum(b.num_rows for b in evals.batches()) == 10


@pytest.mark.parametrize("value", ["0", "-3", "true", "'many'", "1.5"])
def test_max_rows_must_be_a_positive_whole_number(toy_catalog, value):
    write(toy_catalog / "tasks" / "huge_gen.yaml", HUGE_CARD.format(max_rows=value, eval="test"))
    write(toy_catalog / "templates" / "huge_gen.yaml", HUGE_TEMPLATES)
    with pytest.raises(FlanbuildError, match="max_rows"):
        Registry().load_catalog(toy_catalog)


def test_big_catalog_cards_read_lazily():
    """The catalog's huge sources (WMT, math_dataset, newsroom, gigaword, ...) declare max_rows, at least the
    FLAN task cap, so a Hub build never downloads them whole."""
    from flanbuild.catalog.registry import default_registry

    registry = default_registry()
    big = ["wmt14_enfr", "wmt16_ende", "wmt16_encs", "wmt16_enfi", "wmt16_enro", "wmt16_enru", "wmt16_entr",
           "math_dataset", "newsroom", "gigaword", "cnn_dailymail", "xsum", "yelp_polarity"]
    for name in big:
        if name in registry.tasks:
            assert (registry.tasks[name].source.max_rows or 0) >= 30000, name


def _one_group_file(path: Path, rows: int, tag: str = "") -> pa.Table:
    table = pa.table({"text": [f"{tag}row {i}" for i in range(rows)], "n": pa.array(range(rows), pa.int64())})
    pq.write_table(table, path, row_group_size=rows)  # one big row group, as pandas/pyarrow defaults write
    return table


@pytest.fixture
def decoded(monkeypatch):
    """Counts the rows Parquet decodes."""
    seen = {"rows": 0}
    real = pq.ParquetFile.iter_batches

    def counting(self, *args, **kwargs):
        for batch in real(self, *args, **kwargs):
            seen["rows"] += batch.num_rows
            yield batch

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", counting)
    monkeypatch.setattr(loader, "_parked", None)
    return seen


def _read(data: loader.SplitData, lo: int, hi: int) -> list[str]:
    return [t for _, _, b in data.selected_batches(np.arange(lo, hi), batch_rows=512) for t in b.column("text").to_pylist()]


def test_consecutive_reads_of_a_big_row_group_decode_it_once(tmp_path, decoded):
    """Shards of one row group read one after another (cuts inside batches) continue the last read
    instead of decoding the group from its top each time."""
    table = _one_group_file(tmp_path / "big.parquet", 10_000)
    data = loader.SplitData("big", {}, parquet_files=[tmp_path / "big.parquet"])
    cuts = [0, 2500, 5000, 7777, 10_000]
    for lo, hi in zip(cuts, cuts[1:]):
        assert _read(data, lo, hi) == table.column("text").to_pylist()[lo:hi]
    assert decoded["rows"] == 10_000  # from the top each time, it was 25,277


def test_reads_side_by_side_backwards_or_of_a_rewritten_file_get_their_own_rows(tmp_path, decoded):
    path = tmp_path / "big.parquet"
    table = _one_group_file(path, 6000)
    text = table.column("text").to_pylist()
    data = loader.SplitData("big", {}, parquet_files=[path])
    first, second = data.selected_batches(np.arange(0, 6000), 512), data.selected_batches(np.arange(3000, 6000), 512)
    got_first, got_second = [], []
    for b in second:  # two open reads of the same group, interleaved
        got_first += next(first)[2].column("text").to_pylist()
        got_second += b[2].column("text").to_pylist()
    got_first += [t for _, _, b in first for t in b.column("text").to_pylist()]
    assert (got_first, got_second) == (text, text[3000:])
    assert _read(data, 5000, 5100) == text[5000:5100]
    assert _read(data, 100, 200) == text[100:200]  # before the parked read: a new read from the top
    assert _read(data, 4000, 4100) == text[4000:4100]
    new_text = _one_group_file(path, 6000, tag="new ").column("text").to_pylist()
    assert _read(data, 4100, 4200) == new_text[4100:4200]  # not the parked read of the old file
