"""Mirrors and outputs at fsspec URLs (sources/urls.py, output/upload.py): the same bytes as local ones.

fsspec's ``memory://`` file system stands in for an object store inside one process; ``file://`` URLs
for the command line (another process)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import fsspec
import pytest

from flanbuild.builder import BuildConfig, build
from flanbuild.errors import FlanbuildError
from flanbuild.pipeline.mixer import MixConfig
from flanbuild.sources import urls

SAMPLE = Path(__file__).resolve().parent.parent / "flanbuild" / "sample"  # the embedded sample: a mirror layout
TASKS = ("common_gen", "glue_wnli")


def _to_memory(local: Path) -> str:
    fs = fsspec.filesystem("memory")
    root = f"/mirror-{uuid.uuid4().hex}"
    for path in local.rglob("*.parquet"):
        fs.pipe_file(f"{root}/{path.relative_to(local)}", path.read_bytes())
    return f"memory://{root}"


def _config(out, data_dir, tmp_path: Path) -> BuildConfig:
    return BuildConfig(out=out, data_dirs=(data_dir,), tasks=TASKS, mix=MixConfig(heldout=("nli",)), use_cache=False,
                       cache_dir=tmp_path / "cache", plots=False)


def test_mirror_and_output_at_urls_give_the_bytes_of_local_ones(tmp_path, monkeypatch):
    local = build(_config(tmp_path / "local", SAMPLE, tmp_path))
    mirror = _to_memory(SAMPLE)
    out = f"memory://out-{uuid.uuid4().hex}/m"
    remote = build(_config(out, mirror, tmp_path))
    assert remote.out == out
    fs = fsspec.filesystem("memory")
    for f in local.manifest["files"]:
        assert fs.cat_file(f"{out}/{f['path']}".removeprefix("memory://")) == (local.out / f["path"]).read_bytes()
    assert remote.manifest["fingerprint"] == local.manifest["fingerprint"]
    assert {t["source"] for t in remote.manifest["tasks"].values()} == {t["source"] for t in local.manifest["tasks"].values()}
    assert all(t["source"].startswith("mirror:") for t in remote.manifest["tasks"].values())  # not the sample fallback
    assert fs.exists(f"{out}/mixture.json".removeprefix("memory://")) and fs.exists(f"{out}/README.md".removeprefix("memory://"))

    fetched = []  # a second build reads the local copies: nothing is fetched again
    real = fsspec.implementations.memory.MemoryFileSystem.get_file
    monkeypatch.setattr(fsspec.implementations.memory.MemoryFileSystem, "get_file",
                        lambda self, *a, **k: fetched.append(a) or real(self, *a, **k))
    again = build(_config(f"memory://out-{uuid.uuid4().hex}/m", mirror, tmp_path))
    assert again.manifest["fingerprint"] == local.manifest["fingerprint"] and not fetched


def test_a_changed_remote_file_is_fetched_again(tmp_path):
    mirror = _to_memory(SAMPLE)
    m = urls.RemoteMirror.at(mirror, tmp_path)
    [copy] = m.fetch("nyu-mll/glue", "wnli", "train")
    assert copy.read_bytes() == (SAMPLE / "nyu-mll/glue/wnli/train.parquet").read_bytes()
    fsspec.filesystem("memory").pipe_file(f"{mirror.removeprefix('memory://')}/nyu-mll/glue/wnli/train.parquet", b"new")
    assert m.fetch("nyu-mll/glue", "wnli", "train")[0].read_bytes() == b"new"
    assert m.fetch("nyu-mll/glue", "wnli", "no_such_split") == []
    with pytest.raises(FlanbuildError, match="outside the data directory"):
        m.fetch("../../etc", "x", "train")


def test_a_previous_output_at_the_url_is_replaced_and_foreign_files_are_refused(tmp_path):
    out = f"memory://out-{uuid.uuid4().hex}/m"
    fs = fsspec.filesystem("memory")
    root = out.removeprefix("memory://")
    fs.pipe_file(f"{root}/data/train-00000-of-00009.parquet", b"stale")  # not a flanbuild output: refused
    with pytest.raises(FlanbuildError, match="not a flanbuild output"):
        build(_config(out, SAMPLE, tmp_path))
    fs.pipe_file(f"{root}/mixture.json", b"{}")  # a previous output: replaced, its extra files removed
    build(_config(out, SAMPLE, tmp_path))
    assert not fs.exists(f"{root}/data/train-00000-of-00009.parquet")
    assert fs.cat_file(f"{root}/mixture.json") != b"{}"


def test_data_dir_lists_keep_urls_whole():
    assert urls.split_dirs("a:s3://bucket/m:/c::gs://x") == ["a", "s3://bucket/m", "/c", "gs://x"]
    assert urls.is_url("hf://datasets/x") and not urls.is_url("C:/x") and not urls.is_url(Path("s3://x"))


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flanbuild", *args], capture_output=True, text=True, cwd=cwd,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})


def test_cli_with_file_urls(tmp_path):
    mirror = tmp_path / "mirror"
    shutil.copytree(SAMPLE, mirror)
    common = ["--tasks", ",".join(TASKS), "--heldout", "nli", "--no-cache", "--cache-dir", str(tmp_path / "cache"), "-q"]
    proc = _cli("build", "--out", f"file://{tmp_path}/remote", "--data-dir", f"file://{mirror}", *common, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"file://{tmp_path}/remote"
    assert _cli("verify", str(tmp_path / "remote"), cwd=tmp_path).returncode == 0


@pytest.mark.parametrize("args, message", [
    (["--data-dir", "nosuchproto://x"], "cannot open nosuchproto://x"),
    (["--data-dir", "file:///no/such/mirror"], "directory file:///no/such/mirror does not exist"),
    (["--format", "chat"], "need a local --out"),
])
def test_cli_url_mistakes_are_one_line(tmp_path, args, message):
    proc = _cli("build", "--out", f"file://{tmp_path}/remote", "--tasks", ",".join(TASKS), "--heldout", "nli",
                "--no-cache", *args, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("flanbuild: error:") == 1 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "remote").exists()


def test_sources_lists_a_url_mirror_without_copying_it(tmp_path):
    mirror = tmp_path / "mirror"
    shutil.copytree(SAMPLE, mirror)
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1", "FLANBUILD_CACHE": str(tmp_path / "c")}
    proc = subprocess.run([sys.executable, "-m", "flanbuild", "sources", "--data-dir", f"file://{mirror}", "--tasks",
                           "glue_wnli"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"mirror:file://{mirror}/nyu-mll/glue/wnli" in proc.stdout
    assert not (tmp_path / "c").exists()


def test_a_reused_mirror_copy_counts_as_used_by_the_cache(tmp_path):
    """flanbuild cache prune removes the least recently used entries: reading a local copy again is a use."""
    import os
    import time

    from flanbuild import cachedir

    mirror = _to_memory(SAMPLE)
    build(_config(tmp_path / "a", mirror, tmp_path))
    copies = [e for e in cachedir.scan(tmp_path / "cache").entries if e.kind == "mirrors"]
    assert copies
    for entry in copies:
        for path in entry.paths:
            os.utime(path, (time.time() - 86400,) * 2)
    build(_config(tmp_path / "b", mirror, tmp_path))
    again = [e for e in cachedir.scan(tmp_path / "cache").entries if e.kind == "mirrors"]
    assert [e.paths for e in again] == [e.paths for e in copies]
    assert all(time.time() - e.used < 3600 for e in again)
