"""``flanbuild push``: against a local stand-in for the Hub (at HfApi's boundary) and the offline failures."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest

from flanbuild.builder import BuildConfig, build
from flanbuild.output.card import write_card
from flanbuild.cli.main import main
from flanbuild.errors import FlanbuildError
from flanbuild.pipeline.mixer import MixConfig
from flanbuild.output.push import files_to_push, push


class LocalHub:
    """HfApi's two calls that push makes, applied to a folder per repository (what the Hub would store)."""

    def __init__(self, root: Path):
        self.root = root
        self.calls: list[tuple[str, dict]] = []

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kw}))
        assert kw["repo_type"] == "dataset"
        (self.root / repo_id).mkdir(parents=True, exist_ok=True)
        return type("RepoUrl", (), {"url": f"https://hub.local/datasets/{repo_id}"})()

    def upload_folder(self, *, repo_id, folder_path, allow_patterns, ignore_patterns, delete_patterns, **kw):
        from huggingface_hub.utils import filter_repo_objects

        self.calls.append(("upload_folder", {"repo_id": repo_id, **kw}))
        repo, src = self.root / repo_id, Path(folder_path)
        local = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
        upload = set(filter_repo_objects(local, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns))
        remote = sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file())
        for rel in filter_repo_objects(remote, allow_patterns=delete_patterns):
            if rel not in upload:
                (repo / rel).unlink()
        for rel in upload:
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / rel, repo / rel)
        return type("CommitInfo", (), {"oid": "0123456789abcdef0123"})()


@pytest.fixture
def built(toy_registry, tmp_path) -> Path:
    result = build(BuildConfig(out=tmp_path / "out", mix=MixConfig(heldout=("toy_nli",))), registry=toy_registry)
    write_card(result.out, result.manifest, toy_registry.tasks)
    return result.out


def test_push_uploads_a_loadable_dataset(built, toy_registry, tmp_path):
    datasets = pytest.importorskip("datasets")
    (built / "exports" / "chat").mkdir(parents=True)
    (built / "exports" / "chat" / "x.parquet").write_bytes(b"not uploaded")
    hub = LocalHub(tmp_path / "hub")
    result = push(built, "me/flan-toy", private=True, api=hub)
    assert result.url == "https://hub.local/datasets/me/flan-toy" and result.commit.startswith("0123")
    assert hub.calls[0] == ("create_repo", {"repo_id": "me/flan-toy", "repo_type": "dataset", "private": True,
                                            "exist_ok": True, "token": None})
    repo = tmp_path / "hub" / "me" / "flan-toy"
    assert sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file()) == [
        "README.md", "composition.png", "data/eval-00000-of-00001.parquet", "data/train-00000-of-00001.parquet",
        "lengths.png", "mixture.json"]
    assert result.files == sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file())
    ds = datasets.load_dataset(str(repo), cache_dir=str(tmp_path / "cache"))  # what load_dataset(REPO_ID) reads
    m = json.loads((built / "mixture.json").read_text())
    assert {k: v.num_rows for k, v in ds.items()} == m["counts"]

    # a rebuild with more shards: the old shard is deleted remotely in the same commit
    build(BuildConfig(out=built, shard_rows=200, mix=MixConfig(heldout=("toy_nli",))), registry=toy_registry)
    push(built, "me/flan-toy", api=hub)
    shards = sorted(p.name for p in (repo / "data").iterdir())
    assert shards == ["eval-00000-of-00001.parquet"] + [f"train-0000{i}-of-00003.parquet" for i in range(3)]
    assert "fingerprint" in hub.calls[-1][1]["commit_message"]


def test_push_checks_the_build_first(built, tmp_path):
    hub = LocalHub(tmp_path / "hub")
    with pytest.raises(FlanbuildError, match="invalid repository id"):
        push(built, "not a/valid/id", api=hub)
    (built / "data" / "eval-00000-of-00001.parquet").write_bytes(b"truncated")
    with pytest.raises(FlanbuildError, match="mixture.json says"):
        push(built, "me/x", api=hub)
    (built / "README.md").unlink()
    with pytest.raises(FlanbuildError, match="no README.md"):
        push(built, "me/x", api=hub)
    with pytest.raises(FlanbuildError, match="not a flanbuild output"):
        push(tmp_path / "hub", "me/x", api=hub)
    assert hub.calls == []


def test_push_offline_is_one_line_error(built, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["push", str(built), "me/x"])
    err = capsys.readouterr().err
    assert code == 2 and err == "flanbuild: error: cannot push while HF_HUB_OFFLINE=1 is set (unset it to upload)\n"


def test_push_unreachable_endpoint_is_one_line_error(built, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = main(["push", str(built), "me/x", "--endpoint", f"http://127.0.0.1:{port}", "--token", "hf_fake"])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and lines[0].startswith("pushing ") and len(lines) == 2, err
    assert lines[1].startswith(f"flanbuild: error: cannot reach the Hub at http://127.0.0.1:{port}")
    assert "hf_fake" not in err


def test_push_dry_run_lists_files(built, capsys):
    code = main(["push", str(built), "me/x", "--dry-run"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0 and out[-1] == "https://huggingface.co/datasets/me/x"
    assert [line.removeprefix("would upload ") for line in out[:-1]] == files_to_push(built)
    assert "README.md" in files_to_push(built) and "mixture.json" in files_to_push(built)
