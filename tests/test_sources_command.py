"""`flanbuild sources`: one line per task offline; --check against a local stand-in for the Hub API."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flanbuild.cli.main import main
from flanbuild.sources import loader
from conftest import write


def _catalog(tmp_path: Path) -> Path:
    cat = tmp_path / "cat"
    for name, config, splits, labels in [("alpha", "plain", "{train: train, eval: validation}", "[neg, pos]"),
                                         ("beta", "gone", "{train: train}", "[no, yes]")]:
        pass
        write(cat / "tasks" / f"{name}.yaml", f"""
name: {name}
cluster: misc
source:
  hub: org/{name}
  config: {config}
  splits: {splits}
features: {{text: string, label: {{class_label: {labels}}}}}
fields: {{text: text}}
type: classification
options: [a, b]
answer: label
""")
        write(cat / "templates" / f"{name}.yaml", f"task: {name}\ntemplates:\n  - {{id: 1, input: '{{{{text}}}} {{{{options_block}}}}', target: '{{{{answer}}}}'}}\n")
    return cat


def _hub_file(path: Path, columns: dict, labels: dict) -> None:
    features = {c: ({"_type": "ClassLabel", "names": labels[c]} if c in labels else {"_type": "Value", "dtype": "string"})
                for c in columns}
    schema = pa.schema([(c, t) for c, t in columns.items()],
                       metadata={b"huggingface": json.dumps({"info": {"features": features}}).encode()})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({c: pa.array([], type=t) for c, t in columns.items()}, schema=schema), path)


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """A local stand-in for the Hub: HfApi.list_repo_files and HfFileSystem.open over a folder."""
    import huggingface_hub

    root = tmp_path / "hub"
    _hub_file(root / "org/alpha/plain/train/0000.parquet", {"text": pa.string(), "label": pa.int64()}, {"label": ["neg", "pos"]})
    _hub_file(root / "org/alpha/plain/validation/0000.parquet", {"sentence": pa.string(), "label": pa.int64()},
              {"label": ["pos", "neg"]})
    _hub_file(root / "org/beta/other/train/0000.parquet", {"text": pa.string(), "label": pa.int64()}, {"label": ["no", "yes"]})
    calls = []

    class Api:
        def list_repo_files(self, repo_id, repo_type=None, revision=None):
            calls.append((repo_id, repo_type, revision))
            base = root / repo_id
            return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())

    class Fs:
        def open(self, path, mode="rb"):
            repo_path = path.split("datasets/", 1)[1]
            org, name_rev, rest = repo_path.split("/", 2)
            return open(root / org / name_rev.split("@")[0] / rest, mode)

    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    monkeypatch.setattr(huggingface_hub, "HfFileSystem", Fs)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(loader, "hub_reachable", lambda timeout=3.0: True)
    return calls


def test_sources_offline_one_line_per_task(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cat = _catalog(tmp_path)
    mirror = tmp_path / "mirror"
    _hub_file(mirror / "org/alpha/plain/train.parquet", {"text": pa.string(), "label": pa.int64()}, {})
    assert main(["sources", "--catalog", str(cat), "--tasks", "alpha,beta", "--data-dir", str(mirror), "--check"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("alpha  train: mirror:") and "eval: hub:org/alpha plain validation (offline)" in lines[0]
    assert lines[0].endswith("MISSING offline: eval")
    assert lines[1].startswith("beta  train: hub:org/beta gone train")
    assert lines[2].startswith("--check: the Hub is not reachable")


def test_sources_check_against_stand_in(tmp_path, capsys, fake_hub):
    cat = _catalog(tmp_path)
    assert main(["sources", "--catalog", str(cat), "--tasks", "alpha,beta", "--check"]) == 1
    out = capsys.readouterr().out.splitlines()
    problems = [l for l in out if not l.startswith(("alpha  ", "beta  "))]
    assert any("feature 'text' is not a column of the Hub's eval split" in l for l in problems)
    assert any("config 'gone' not on the Hub" in l and "other" in l for l in problems)
    assert sum("label names of 'label' differ: card ['neg', 'pos'], Hub ['pos', 'neg']" in l for l in problems) == 1
    assert ("org/alpha", "dataset", None) in fake_hub
