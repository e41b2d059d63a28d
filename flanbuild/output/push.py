"""``flanbuild push OUT REPO_ID``: upload a build to a Hugging Face dataset repository.

One commit with the dataset card (README.md, whose ``configs:`` block the Hub's viewer and
``load_dataset(REPO_ID)`` read), its pictures, ``mixture.json`` and the ``data/`` shards; remote files
under ``data/`` that the new build does not have (a previous build's shards) are deleted in the same
commit. ``exports/`` is uploaded only with ``include_exports``.

Before anything is sent, the build is checked against ``mixture.json`` (every listed file present with
its recorded size). The Hub is reached only through ``HfApi.create_repo`` and ``HfApi.upload_folder``;
``api=`` replaces that boundary (the tests pass a local stand-in). Offline (``HF_HUB_OFFLINE=1``) or
with an unreachable endpoint, the push fails with one line, before or instead of a partial upload.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from flanbuild.errors import FlanbuildError

ALLOW = ["README.md", "mixture.json", "*.png", "data/*"]
IGNORE = [".*", "*/.*", "*.tmp", "*.partial-*"]
DELETE = ["data/*"]


@dataclass(frozen=True)
class PushResult:
    repo_id: str
    url: str
    files: list[str]
    bytes: int
    commit: str | None


def _offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE", "")
    if value.upper() in ("1", "ON", "YES", "TRUE"):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency of datasets
        return False


def files_to_push(out: Path, include_exports: bool = False) -> list[str]:
    """The paths (relative to OUT, sorted) that a push uploads."""
    from huggingface_hub.utils import filter_repo_objects

    allow = ALLOW + (["exports/*"] if include_exports else [])
    rel = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    return sorted(filter_repo_objects(rel, allow_patterns=allow, ignore_patterns=IGNORE))


def check_build(out: Path) -> dict:
    """The manifest of a build that is complete on disk (else FlanbuildError naming the problem)."""
    from flanbuild.output.manifest import load_manifest

    manifest = load_manifest(out)
    if not (out / "README.md").is_file():
        raise FlanbuildError(f"{out} has no README.md (the dataset card); rebuild it before pushing")
    for f in manifest["files"]:
        p = out / f["path"]
        if not p.is_file():
            raise FlanbuildError(f"{p} is listed in mixture.json but missing; rebuild before pushing")
        if p.stat().st_size != f["bytes"]:
            raise FlanbuildError(f"{p} has {p.stat().st_size} bytes, mixture.json says {f['bytes']}; "
                                 "rebuild before pushing")
    return manifest


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:300]


def _hub_error(e: BaseException, repo_id: str, endpoint: str) -> FlanbuildError:
    """A Hub-side failure as one line: offline, unreachable, authentication, or anything else."""
    name = type(e).__name__
    status = getattr(getattr(e, "response", None), "status_code", None)
    if name == "OfflineModeIsEnabled":
        return FlanbuildError("cannot push while HF_HUB_OFFLINE=1 is set (unset it to upload)")
    if status in (401, 403):
        return FlanbuildError(f"the Hub refused the push to {repo_id} (HTTP {status}): pass --token, set HF_TOKEN "
                              "or run `hf auth login` with a token that can write to it")
    if status is not None:
        return FlanbuildError(f"push to {repo_id} failed: HTTP {status}: {_one_line(e)}")
    if any(k in name for k in ("Connect", "Timeout", "Network", "Transport", "Protocol")) or isinstance(e, OSError):
        return FlanbuildError(f"cannot reach the Hub at {endpoint} ({name}: {_one_line(e)})")
    return FlanbuildError(f"push to {repo_id} failed: {name}: {_one_line(e)}")


def push(out: Path, repo_id: str, *, private: bool = False, token: str | None = None, endpoint: str | None = None,
         revision: str | None = None, commit_message: str | None = None, include_exports: bool = False,
         dry_run: bool = False, api=None, log: Callable[[str], None] | None = None) -> PushResult:
    """Upload the build in ``out`` to the dataset repository ``repo_id`` (created if missing)."""
    log = log or (lambda msg: None)
    out = Path(out).expanduser().absolute()
    manifest = check_build(out)
    try:
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(repo_id)
    except Exception as e:  # noqa: BLE001 - HFValidationError: a bad name given by the user
        raise FlanbuildError(f"invalid repository id {repo_id!r}: {_one_line(e)}") from None
    files = files_to_push(out, include_exports)
    size = sum((out / f).stat().st_size for f in files)
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    url = f"{endpoint}/datasets/{repo_id}"
    if dry_run:
        for f in files:
            log(f"would upload {f}")
        return PushResult(repo_id, url, files, size, None)
    if api is None:
        if _offline():
            raise FlanbuildError("cannot push while HF_HUB_OFFLINE=1 is set (unset it to upload)")
        from huggingface_hub import HfApi

        api = HfApi(endpoint=endpoint, token=token)
    message = commit_message or (f"flanbuild: {manifest['config']['mixture']} "
                                 f"(train {manifest['counts']['train']}, eval {manifest['counts']['eval']}, "
                                 f"fingerprint {manifest['fingerprint'][:12]})")
    log(f"pushing {len(files)} files ({size / 1e6:.1f} MB) to {url}")
    try:
        repo_url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True, token=token)
        commit = api.upload_folder(
            repo_id=repo_id, repo_type="dataset", folder_path=str(out), revision=revision, token=token,
            commit_message=message, allow_patterns=ALLOW + (["exports/*"] if include_exports else []),
            ignore_patterns=IGNORE, delete_patterns=DELETE + (["exports/*"] if include_exports else []),
        )
    except FlanbuildError:
        raise
    except Exception as e:  # noqa: BLE001 - everything the Hub client raises becomes one line
        raise _hub_error(e, repo_id, endpoint) from None
    url = str(getattr(repo_url, "url", None) or url)
    oid = getattr(commit, "oid", None)
    log(f"pushed {url}" + (f" (commit {oid[:12]})" if oid else ""))
    return PushResult(repo_id, url, files, size, oid)
