"""README.md examples run as written."""

import os
import re
import shlex
import subprocess
import sys

from conftest import MIRROR, REPO

README = (REPO / "README.md").read_text()


def _env():
    """The user's environment: nothing the README does not tell them to set (no FLANBUILD_DATA_DIR: without
    a mirror the examples build from the embedded sample)."""
    env = {k: v for k, v in os.environ.items() if k != "FLANBUILD_DATA_DIR"}
    env["HF_HUB_OFFLINE"] = "1"  # the suite's rule: tests never wait on the Hub
    return env


def test_python_api_example_runs(tmp_path):
    section = README.split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=_env())
    assert r.returncode == 0, r.stderr
    assert "'train':" in r.stdout
    assert (tmp_path / "out" / "custom" / "mixture.json").is_file()


def test_catalog_example_commands_run(tmp_path):
    block = re.search(r"whose data are local JSONL files.*?```bash\n(.*?)```", README, re.S).group(1)
    for line in block.strip().splitlines():
        args = shlex.split(line)
        assert args[0] == "flanbuild"
        args = [a if a != "out/mine" else str(tmp_path / "mine") for a in args[1:]]
        r = subprocess.run([sys.executable, "-m", "flanbuild", *args, "-q"], cwd=REPO, capture_output=True,
                           text=True, env=_env())
        assert r.returncode == 0, line + "\n" + r.stderr
    assert (tmp_path / "mine" / "mixture.json").is_file()
