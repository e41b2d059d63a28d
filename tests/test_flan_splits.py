"""docs/flan-splits.md (FLAN's train/eval split per dataset, from google-research/FLAN) agrees with the cards."""

import re

import pytest

import flanbuild as fb
from conftest import REPO

DOC = REPO / "docs" / "flan-splits.md"


def _table() -> list[dict]:
    text = DOC.read_text(encoding="utf-8")
    block = re.search(r"<!-- flan-splits:start -->\n(.*?)\n<!-- flan-splits:end -->", text, re.S)
    assert block, "docs/flan-splits.md has no table between the flan-splits markers"
    lines = [ln for ln in block.group(1).splitlines() if ln.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = []
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == len(head), line
        rows.append(dict(zip(head, cells)))
    return rows


@pytest.fixture(scope="module")
def registry():
    return fb.load_registry()


def test_table_covers_every_flan_dataset_once():
    rows = _table()
    tasks = [t.strip() for r in rows for t in r["task(s)"].split(",")]
    assert len(tasks) == len(set(tasks)), "a task is listed twice"
    assert len(rows) >= 60
    assert all(r["FLAN source"].startswith("google-research/FLAN") for r in rows)


@pytest.mark.parametrize("row", _table(), ids=lambda r: r["FLAN dataset (TFDS)"])
def test_cards_use_flans_splits(registry, row):
    def split(cell):
        value = cell.strip("`")
        return None if value == "—" else value

    for name in (t.strip() for t in row["task(s)"].split(",")):
        assert name in registry.tasks, f"{name} is in the table but has no card"
        splits = registry.tasks[name].source.splits
        assert splits.get("train") == split(row["train split"]), name
        assert splits.get("eval") == split(row["eval split"]), name
        carved = "train[-" in row["FLAN rule"]
        assert carved == splits.get("eval", "").startswith("train[-"), f"{name}: carve does not match FLAN's rule"
