"""The embedded default sample: a build with no data directory and no Hub still writes a loadable mixture."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import MIRROR, REPO

SAMPLE = REPO / "flanbuild" / "sample"
# Licences that allow redistribution (SPDX ids, lower case); the sample must hold nothing else.
REDISTRIBUTABLE = {"mit", "apache-2.0", "bsd-2-clause", "bsd-3-clause", "afl-3.0", "cc-by-4.0", "cc-by-sa-3.0",
                   "cc-by-sa-4.0", "cc0-1.0"}


def _offline_env(tmp_path: Path) -> dict:
    """No mirror, no Hub, and an empty Hugging Face cache: only the embedded sample can provide data."""
    env = {k: v for k, v in os.environ.items() if k not in ("FLANBUILD_DATA_DIR", "HF_DATASETS_CACHE", "HF_HUB_CACHE")}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"))
    return env


def _build(tmp_path: Path, *args: str, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flanbuild", "build", *args], cwd=cwd, capture_output=True,
                          text=True, env=env or _offline_env(tmp_path))


def test_sample_sources_record_redistributable_licences():
    info = json.loads((SAMPLE / "sources.json").read_text())
    assert info["datasets"], "the sample lists no datasets"
    on_disk = {p.relative_to(SAMPLE).as_posix() for p in SAMPLE.rglob("*.parquet")}
    listed = set()
    for record in info["datasets"]:
        assert record["license"] in REDISTRIBUTABLE, record
        assert record["source_repo"].startswith("https://github.com/") and len(record["source_commit"]) == 40
        for split, s in record["splits"].items():
            path = f"{record['hub_id']}/{record['config']}/{split}.parquet"
            listed.add(path)
            assert pq.ParquetFile(SAMPLE / path).metadata.num_rows == s["rows"] <= 300
    assert on_disk == listed  # every shipped file is accounted for, with its licence
    size = sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file())
    assert size < 5_000_000
    text = (SAMPLE / "SOURCES.md").read_text()
    assert all(f"`{r['hub_id']}` / `{r['config']}`" in text for r in info["datasets"])


def test_sample_covers_every_cluster_it_claims_including_nli():
    from flanbuild.catalog.registry import Registry, builtin_catalog_dir

    registry = Registry()
    registry.load_catalog(builtin_catalog_dir())
    info = json.loads((SAMPLE / "sources.json").read_text())
    clusters = {c for r in info["datasets"] for c in r["clusters"]}
    assert "nli" in clusters
    for record in info["datasets"]:
        for s in record["splits"].values():
            for task in s["tasks"]:
                src = registry.tasks[task].source
                location = src.mirror_location() if hasattr(src, "mirror_location") else (src.hub, src.config)
                assert location == (record["hub_id"], record["config"])


def test_offline_build_without_data_uses_the_sample(tmp_path):
    datasets = pytest.importorskip("datasets")
    out = tmp_path / "mixture"
    r = _build(tmp_path, "--out", str(out))
    assert r.returncode == 0, r.stderr
    log = r.stdout + r.stderr
    lines = [line for line in log.splitlines() if "embedded sample" in line]
    assert len(lines) == 1 and lines[0].startswith("demo mixture from the embedded sample: ")
    assert "give --data-dir or go online for the full FLAN mixture" in lines[0]
    m = json.loads((out / "mixture.json").read_text())
    n_tasks = int(lines[0].split(": ")[1].split()[0])
    assert n_tasks == len(m["tasks"]) > 0
    assert all(t["source"].startswith("sample:") for t in m["tasks"].values())
    ds = datasets.load_dataset(str(out))
    assert sorted(ds) == ["eval", "train"]
    assert ds["train"].num_rows > 0 and ds["eval"].num_rows > 0
    assert set(ds["eval"]["cluster"]) == {"nli"}
    card = (out / "README.md").read_text()
    assert "embedded sample" in card and "Embedded sample" in card
    for record in json.loads((SAMPLE / "sources.json").read_text())["datasets"]:
        used = any(t["source"].startswith(f"sample:{record['hub_id']}/{record['config']}/") for t in m["tasks"].values())
        assert (record["source_repo"] in card) == used


def test_mirror_wins_over_the_sample(tmp_path, mirror):
    out = tmp_path / "mixture"
    r = _build(tmp_path, "--out", str(out), "--data-dir", str(mirror), "--tasks", "glue_wnli,super_glue_copa", "-q")
    assert r.returncode == 0, r.stderr
    assert "embedded sample" not in r.stdout + r.stderr
    m = json.loads((out / "mixture.json").read_text())
    assert {t["source"].split(":")[0] for t in m["tasks"].values()} == {"mirror"}


def test_make_sample_is_deterministic(tmp_path, mirror):
    script = REPO / "tools" / "make_sample.py"
    outs = []
    for name in ("a", "b"):
        r = subprocess.run([sys.executable, str(script), "--mirror", str(mirror), "--out", str(tmp_path / name)],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        outs.append({p.relative_to(tmp_path / name).as_posix(): p.read_bytes()
                     for p in (tmp_path / name).rglob("*") if p.is_file()})
    assert outs[0] == outs[1] and "sources.json" in outs[0]
    info = json.loads(outs[0]["sources.json"])
    assert all(r["license"] in REDISTRIBUTABLE for r in info["datasets"])


@pytest.mark.slow
def test_wheel_ships_the_sample_and_builds_from_it(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(tmp_path), str(REPO)], capture_output=True, text=True)
    if r.returncode != 0:
        r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
                           capture_output=True, text=True)
    if r.returncode != 0 and "hatchling" in r.stderr:
        pytest.skip("hatchling is not installable here")
    assert r.returncode == 0, r.stderr
    wheel = next(tmp_path.glob("flanbuild-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "flanbuild/sample/sources.json" in names and "flanbuild/sample/SOURCES.md" in names
    assert "flanbuild/sample/nyu-mll/glue/wnli/validation.parquet" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {**_offline_env(tmp_path), "PYTHONPATH": str(site)}
    work = tmp_path / "elsewhere"
    work.mkdir()
    r = _build(tmp_path, "--out", str(work / "mix"), "--heldout", "nli", "-q", cwd=work, env=env)
    assert r.returncode == 0, r.stderr
    m = json.loads((work / "mix" / "mixture.json").read_text())
    assert m["counts"]["eval"] > 0 and m["counts"]["train"] > 0
