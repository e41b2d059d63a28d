"""Offline means offline: one policy (flanbuild.sources.offline); a missing model or tokenizer is one line at once."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO
from flanbuild.errors import FlanbuildError
from flanbuild.sources import offline

MISSING = "flanbuild-test/no-such-model"  # a hub id that is in no cache


@pytest.fixture
def policy(monkeypatch, tmp_path):
    """An isolated policy state and an empty Hugging Face cache."""
    monkeypatch.setattr(offline, "_STATE", {})
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    return monkeypatch


@pytest.mark.parametrize("var", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_environment_switches_mean_offline(policy, var):
    for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        policy.delenv(v, raising=False)
    policy.setattr(offline, "_STATE", {"reachable": True})  # as if the Hub answered
    assert not offline.is_offline()
    policy.setenv(var, "1")
    assert offline.is_offline() and not offline.hub_reachable()


def test_set_offline_forces_it_without_touching_the_environment(policy):
    for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        policy.delenv(v, raising=False)
    policy.setattr(offline, "_STATE", {"reachable": True})
    before = dict(os.environ)
    offline.set_offline()
    assert offline.is_offline()
    offline.set_offline(False)
    assert not offline.is_offline()
    assert dict(os.environ) == before


def test_require_local_passes_paths_and_cached_ids_and_refuses_the_rest(policy, tmp_path):
    policy.setenv("HF_HUB_OFFLINE", "1")
    offline.require_local(str(tmp_path))  # a local directory: fine offline
    with pytest.raises(FlanbuildError, match=r"cannot load tokenizer .*offline \(HF_HUB_OFFLINE is set\).*neither a local"):
        offline.require_local(MISSING, "tokenizer")
    snapshot = tmp_path / "hf" / "hub" / f"models--{MISSING.replace('/', '--')}" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    offline.require_local(MISSING, "tokenizer")  # in the cache: may load, cache only


def test_hub_offline_switches_the_libraries_and_restores_them(policy):
    constants = pytest.importorskip("huggingface_hub.constants")
    before = constants.HF_HUB_OFFLINE
    environ = dict(os.environ)
    with offline.hub_offline(True):
        assert constants.HF_HUB_OFFLINE is True
    assert constants.HF_HUB_OFFLINE == before and dict(os.environ) == environ


def test_load_tokenizer_offline_is_one_line_and_writes_no_environment(policy):
    from flanbuild.sources.tokenizers import load_tokenizer

    policy.setenv("HF_HUB_OFFLINE", "1")
    environ = dict(os.environ)
    with pytest.raises(FlanbuildError, match="neither a local directory nor in the Hugging Face cache"):
        load_tokenizer.__wrapped__(MISSING)
    assert dict(os.environ) == environ


def _run(*args, env_extra=None, tmp_path=None):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")}
    env.update(env_extra or {})
    env["HF_HOME"] = str(tmp_path / "hf")
    return subprocess.run([sys.executable, "-m", "flanbuild", *args], cwd=REPO, capture_output=True, text=True, env=env)


@pytest.fixture
def small_build(toy_registry, tmp_path):
    from conftest import toy_build

    return toy_build(toy_registry, tmp_path / "mix").out


@pytest.mark.parametrize("command", [["stats", "OUT", "--offline"], ["card", "OUT", "--offline"],
                                     ["stats", "OUT", "HF"], ["card", "OUT", "HF"]])
def test_stats_and_card_with_a_missing_tokenizer_offline_fail_in_one_line(small_build, tmp_path, command):
    env = {"HF_HUB_OFFLINE": "1"} if "HF" in command else {}
    args = [str(small_build) if a == "OUT" else a for a in command if a != "HF"]
    r = _run(*args, "--tokenizer", MISSING, env_extra=env, tmp_path=tmp_path)
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "neither a local directory nor in the Hugging Face cache" in lines[0], r.stderr


def test_build_with_a_missing_tokenizer_offline_fails_in_one_line(toy_catalog, tmp_path):
    r = _run("build", "--out", str(tmp_path / "o"), "--catalog", str(toy_catalog), "--tasks", "nli_a,sent_a",
             "--heldout", "toy_nli", "--tokenizer", MISSING, "--offline", tmp_path=tmp_path)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode != 0 and len(lines) == 1 and "cannot load tokenizer" in lines[0], r.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", ["finetune", "evaluate"])
def test_finetune_and_evaluate_with_a_missing_hub_model_offline_fail_in_one_line(small_build, tmp_path, command):
    args = [command, "--data", str(small_build), "--model", MISSING]
    if command == "finetune":
        args += ["--out", str(tmp_path / "run")]
    r = _run(*args, env_extra={"HF_HUB_OFFLINE": "1"}, tmp_path=tmp_path)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode != 0 and len(lines) == 1, r.stderr
    assert f"cannot load model '{MISSING}': offline (HF_HUB_OFFLINE is set)" in lines[0]
