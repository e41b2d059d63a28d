"""A finished output copied to an fsspec URL (``--out s3://bucket/mixtures/m``).

The build itself always happens in a local directory (a temporary one for a URL ``--out``), where the
staging and atomic swap of pipeline/writer.py apply; this module then copies the files up. Object
stores have no atomic directory rename, so the order is what keeps readers safe: split files and
pictures first, ``README.md`` next, ``mixture.json`` last, so whoever finds a ``mixture.json`` finds
the files it lists (and can check their SHA-256 in it). Files of the previous output that the new one
does not have are deleted after the new ``mixture.json`` is in place. A URL that holds something other
than a flanbuild output is refused before any work, as a local directory is.
"""

from __future__ import annotations

from pathlib import Path

from flanbuild.errors import FlanbuildError
from flanbuild.sources import urls

MANIFEST = "mixture.json"


def _filesystem(url: str):
    fs, root = urls.filesystem(url)
    return fs, root.rstrip("/")


def _existing(fs, root: str) -> list[str]:
    """Files now under ``root`` (relative paths); [] when there is nothing."""
    if not fs.exists(root):
        return []
    return sorted(p[len(root) + 1:] for p in fs.find(root) if p.startswith(root + "/"))


def check_target(url: str) -> None:
    """Refuse, before any work, a URL holding files that are not a flanbuild output."""
    fs, root = _filesystem(url)
    try:
        files = _existing(fs, root)
    except Exception as e:  # noqa: BLE001 - network and permission errors of any fsspec backend
        raise FlanbuildError(f"cannot read {url}: {type(e).__name__}: {e}") from None
    if files and MANIFEST not in files:
        raise FlanbuildError(f"{url} holds files and is not a flanbuild output; refusing to overwrite it")


def upload(local: Path, url: str) -> list[str]:
    """Copy the output in ``local`` to ``url`` (see the module docstring for the order); returns the
    relative paths written."""
    fs, root = _filesystem(url)
    new = sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file())
    last = {"README.md": 1, MANIFEST: 2}
    try:
        old = _existing(fs, root)
        for rel in sorted(new, key=lambda r: (last.get(r, 0), r)):
            target = f"{root}/{rel}"
            fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            fs.put_file(str(local / rel), target)
        for rel in sorted(set(old) - set(new)):
            fs.rm_file(f"{root}/{rel}")
    except Exception as e:  # noqa: BLE001 - network and permission errors of any fsspec backend
        raise FlanbuildError(f"cannot write {url}: {type(e).__name__}: {e}") from None
    return new
