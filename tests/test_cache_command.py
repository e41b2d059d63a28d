"""``flanbuild cache info|prune|clear``: the cache by kind, least recently used first, never anything else."""

from __future__ import annotations

import json
import os
import time

import pytest

from flanbuild import cachedir
from flanbuild.cli.main import main
from conftest import toy_build

DAY = 86400.0


def _built_cache(toy_registry, tmp_path):
    cache = tmp_path / "cache"
    result = toy_build(toy_registry, tmp_path / "out", cache_dir=cache, plots=True)
    return cache, result


def _info(cache, capsys) -> dict:
    assert main(["cache", "info", "--cache-dir", str(cache), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def _age(paths, days: float) -> None:
    past = time.time() - days * DAY
    for p in paths:
        os.utime(p, (past, past))


def test_info_counts_every_kind_a_build_writes_and_leaves_other_files_alone(toy_registry, tmp_path, capsys):
    cache, _ = _built_cache(toy_registry, tmp_path)
    written = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())
    (cache / "notes").mkdir()
    (cache / "notes" / "mine.txt").write_text("keep me")
    (cache / "ab").mkdir(exist_ok=True)
    (cache / "ab" / "mine.parquet").write_text("not a cache key")
    info = _info(cache, capsys)
    kinds = info["kinds"]
    assert {k for k, v in kinds.items() if v["entries"]} == {"render", "filters", "decontam", "files", "plots"}
    assert kinds["plots"]["entries"] == 2
    assert info["total_bytes"] == written
    assert sorted(info["not_flanbuilds"]) == [str(cache / "ab" / "mine.parquet"), str(cache / "notes")]
    main(["cache", "info", "--cache-dir", str(cache)])
    text = capsys.readouterr().out
    assert "render" in text and "not flanbuild's (never removed): ab/mine.parquet, notes" in text

    assert main(["cache", "clear", "--cache-dir", str(cache)]) == 0
    assert [str(p) for p in _files(cache)] == ["ab/mine.parquet", "notes/mine.txt"]


def test_a_cleared_cache_only_costs_time(toy_registry, tmp_path, capsys):
    """Nothing in the cache is needed: after clear (or any prune), a rebuild writes the same bytes."""
    cache, first = _built_cache(toy_registry, tmp_path)
    assert main(["cache", "clear", "--cache-dir", str(cache), "-q"]) == 0
    assert not any(p.is_file() for p in cache.rglob("*"))
    again = toy_build(toy_registry, tmp_path / "again", cache_dir=cache, plots=True)
    assert again.manifest["fingerprint"] == first.manifest["fingerprint"]
    assert (again.out / "lengths.png").read_bytes() == (first.out / "lengths.png").read_bytes()


def test_prune_removes_the_least_recently_used_first_and_a_hit_counts_as_a_use(toy_registry, tmp_path, capsys):
    cache, _ = _built_cache(toy_registry, tmp_path)
    _age(cache.rglob("*.*"), days=10)  # every entry written ten days ago...
    toy_build(toy_registry, tmp_path / "out2", cache_dir=cache, plots=True)  # ...and used again now
    entries = cachedir.scan(cache).entries
    assert entries and all(time.time() - e.used < DAY for e in entries)

    kept_kinds = {"render", "decontam"}
    _age([p for e in entries if e.kind not in kept_kinds for p in e.paths], days=10)
    assert main(["cache", "prune", "--cache-dir", str(cache), "--older-than", "7d"]) == 0
    assert {e.kind for e in cachedir.scan(cache).entries} == kept_kinds

    left = cachedir.scan(cache).entries
    oldest = min(left, key=lambda e: e.used)
    _age(oldest.paths, days=3)
    budget = sum(e.size for e in left) - 1  # one byte too many: the oldest entry goes, and only it
    assert main(["cache", "prune", "--cache-dir", str(cache), "--max-size", str(budget)]) == 0
    after = cachedir.scan(cache).entries
    assert len(after) == len(left) - 1 and oldest.paths[0] not in {e.paths[0] for e in after}


def test_prune_by_kind_dry_run_and_killed_writes(toy_registry, tmp_path, capsys):
    cache, _ = _built_cache(toy_registry, tmp_path)
    before = _files(cache)
    assert main(["cache", "prune", "--cache-dir", str(cache), "--max-size", "0", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would remove" in out and _files(cache) == before

    assert main(["cache", "prune", "--cache-dir", str(cache), "--max-size", "0", "--kind", "plots"]) == 0
    assert {e.kind for e in cachedir.scan(cache).entries} == {"render", "filters", "decontam", "files"}

    old = cache / "ab" / f".{'a' * 64}.arrow.123.tmp"  # a write killed long ago
    new = cache / "files" / ".x.json.456.tmp"  # perhaps a build writing now: not touched
    for p in (old, new):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"partial")
    _age([old], days=1)
    assert main(["cache", "prune", "--cache-dir", str(cache), "--older-than", "30d"]) == 0
    assert not old.exists() and new.exists()


def _exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse's usage errors
        return e.code


@pytest.mark.parametrize("argv, message", [
    (["prune"], "give --max-size SIZE, --older-than AGE or both"),
    (["prune", "--max-size", "10X"], "expected a size such as 500M"),
    (["prune", "--older-than", "30"], "expected an age such as 12h"),
    (["prune", "--max-size", "1G", "--kind", "nope"], "invalid choice: 'nope'"),
    ([], "the following arguments are required: ACTION"),
])
def test_bad_cache_commands_are_one_line_errors(argv, message, tmp_path, capsys):
    assert _exit_code(["cache", *argv] + (["--cache-dir", str(tmp_path)] if argv else [])) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_a_cache_dir_that_is_a_file_is_an_error_and_a_missing_one_is_empty(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["cache", "info", "--cache-dir", str(tmp_path / "file")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert main(["cache", "info", "--cache-dir", str(tmp_path / "none")]) == 0
    assert "does not exist yet" in capsys.readouterr().out
    assert main(["cache", "prune", "--cache-dir", str(tmp_path / "none"), "--max-size", "1G"]) == 0


def test_sizes_and_ages():
    from flanbuild.cli import argtypes

    assert argtypes.size("500M") == 500 * 10**6 and argtypes.size("1.5GiB") == int(1.5 * 2**30)
    assert argtypes.size("0") == 0 and argtypes.size("20 gb") == 20 * 10**9
    assert argtypes.age("12h") == 12 * 3600 and argtypes.age("2w") == 14 * DAY


def test_a_build_with_a_cache_limit_keeps_what_it_used_and_drops_the_rest(toy_registry, tmp_path):
    cache, first = _built_cache(toy_registry, tmp_path)
    _age(cache.rglob("*.*"), days=2)
    started = time.time() - DAY
    second = toy_build(toy_registry, tmp_path / "out2", cache_dir=cache, plots=True, seed=7)
    used = {e.paths[0]: e.size for e in cachedir.scan(cache).entries if e.used >= started}
    assert second.manifest["fingerprint"] != first.manifest["fingerprint"] and len(used) < len(cachedir.scan(cache).entries)
    _age(cache.rglob("*.*"), days=1)
    toy_build(toy_registry, tmp_path / "out3", cache_dir=cache, plots=True, seed=7, cache_max_size=sum(used.values()))
    assert {e.paths[0] for e in cachedir.scan(cache).entries} == set(used)  # what the build used, and only that


def test_the_cache_limit_from_the_environment(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FLANBUILD_CACHE_MAX_SIZE", "lots")
    assert main(["build", "--out", str(tmp_path / "o"), "--tasks", "glue_wnli"]) == 2
    assert "FLANBUILD_CACHE_MAX_SIZE: expected a size such as 500M" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert main(["build", "--out", str(tmp_path / "o"), "--no-cache", "--cache-max-size", "1G"]) == 2
    assert "--no-cache does not use" in capsys.readouterr().err
