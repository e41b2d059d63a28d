"""README.md as a tested contract: every command line of every ```bash block runs as written.

The commands run in a copy of the repository (its tracked and unignored files, so ``out/`` of a build
lands in the copy), with ``../shared`` beside it when the project's data mirror exists, and with the
environment the README tells a user to have: ``.venv`` activated (``.venv`` is the project's, already
installed by ``make``; make is told it is up to date so that it never reinstalls it into the copy). No
other variable is set: a line that sets one (``FLANBUILD_DATA_DIR=... make mixture``) sets it itself.
Lines that cannot run here are skipped with the reason (the suite itself, a Dask scheduler, the mirror
when it is absent, an extra that is not installed).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")
SHARED = REPO.parent / "shared"
HAVE_MIRROR = (SHARED / "data" / "hub" / "nyu-mll" / "glue").is_dir()


def readme_commands() -> list[tuple[str, str]]:
    """(id, command line) of every line of every ```bash block, comments removed."""
    out = []
    for b, block in enumerate(re.findall(r"```bash\n(.*?)```", README, re.S)):
        for n, line in enumerate(block.splitlines()):
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command and not command.startswith("#"):
                out.append((f"block{b}-line{n}-{command.split()[0]}", command))
    return out


COMMANDS = readme_commands()


def _skip_reason(command: str) -> str | None:
    import importlib.util

    if re.match(r"make test(-fast)?\b", command):
        return "runs the test suite itself"
    if "tcp://" in command:
        return "needs a Dask scheduler running at that address"
    if "../shared/data" in command and not HAVE_MIRROR:
        return f"needs the project's data mirror at {SHARED / 'data'}"
    if "--engine dask" in command and importlib.util.find_spec("distributed") is None:
        return "needs the dask extra (pip install -e '.[dask]')"
    if re.search(r"\b(finetune|evaluate)\b", command) and importlib.util.find_spec("torch") is None:
        return "needs the train extra (torch)"
    return None


def _slow(command: str) -> bool:
    return bool(re.search(r"\.\./shared|finetune|evaluate|--engine dask|--mixture flan2022", command))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A copy of the repository with the project's .venv and, if present, ../shared beside it."""
    if not (REPO / ".venv" / "bin" / "flanbuild").exists():
        pytest.skip("the project's .venv is not installed (run make mixture once)")
    root = tmp_path_factory.mktemp("readme")
    repo = root / "repo"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file() and not name.startswith("out/"):
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / name)
    (repo / ".venv").symlink_to(REPO / ".venv")
    if SHARED.is_dir():
        (root / "shared").symlink_to(SHARED)
    return repo


def _env(workdir: Path) -> dict:
    """The user's environment with .venv activated (what `source .venv/bin/activate` does)."""
    env = {k: v for k, v in os.environ.items() if k not in ("FLANBUILD_DATA_DIR", "PYTHONPATH", "VIRTUAL_ENV")}
    env["VIRTUAL_ENV"] = str(workdir / ".venv")
    env["PATH"] = f"{workdir / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def _as_run(command: str) -> str:
    """make must treat the project's .venv as installed (it is) rather than reinstall it into the copy."""
    return re.sub(r"\bmake (?=[a-z])", "make -o .venv/.installed-core -o .venv/.installed ", command)


def _run(workdir: Path, command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", _as_run(command)], cwd=workdir, capture_output=True, text=True,
                          env=_env(workdir))


def _prepare(workdir: Path, command: str) -> None:
    """What the README says comes before a command: a built out/mixture, and my_recipe.yaml."""
    if "--data out/mixture" in command and not (workdir / "out" / "mixture" / "mixture.json").is_file():
        r = _run(workdir, "make mixture")
        assert r.returncode == 0, r.stderr[-2000:]
    if "my_recipe.yaml" in command:
        recipe = re.search(r"`my_recipe.yaml`.*?```yaml\n(.*?)```", README, re.S)
        assert recipe, "the README shows no my_recipe.yaml"
        (workdir / "my_recipe.yaml").write_text(recipe.group(1), encoding="utf-8")


@pytest.mark.parametrize("command", [pytest.param(c, id=i, marks=[pytest.mark.slow] if _slow(c) else [])
                                     for i, c in COMMANDS])
def test_readme_command_runs(workdir, command):
    reason = _skip_reason(command)
    if reason:
        pytest.skip(reason)
    _prepare(workdir, command)
    r = _run(workdir, command)
    assert r.returncode == 0, f"{command}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    for out in re.findall(r"--out (\S+)", command):
        if re.match(r"flanbuild build|make", command):
            out = out.replace("file://$PWD/", "")  # a file:// URL output lands in the copy too
            assert (workdir / out / "mixture.json").is_file(), f"{command}: no {out}/mixture.json"
    if command.startswith("make mixture") or command.endswith("make mixture"):
        assert (workdir / "out" / "mixture" / "mixture.json").is_file()


def test_readme_has_the_commands_it_promises():
    """Every README bash block is found here, and the quick start is the first one."""
    assert COMMANDS and COMMANDS[0][1] == "make mixture"
    assert any("--format lm-eval" in c for _, c in COMMANDS)


def test_cli_synopsis_options_exist():
    """The CLI synopsis (a ```text block: usage, not commands) names only options each command has."""
    synopsis = re.search(r"## The CLI\n\n```text\n(.*?)```", README, re.S).group(1)
    for line in synopsis.splitlines():
        words = re.sub(r"\s+#.*$", "", line).split()
        if len(words) < 2 or "|" in words[1]:
            continue
        options = set(re.findall(r"(--[a-z][a-z-]*|-n)\b", line))
        r = subprocess.run([sys.executable, "-m", "flanbuild", words[1], "--help"], cwd=REPO, capture_output=True,
                           text=True)
        assert r.returncode == 0, r.stderr
        missing = [o for o in options if o not in r.stdout]
        assert not missing, f"flanbuild {words[1]} --help lacks {missing}"
