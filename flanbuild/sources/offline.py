"""The one offline policy: whether flanbuild may contact the Hugging Face Hub, used by build, stats, card,
finetune and evaluate.

Offline means any of: ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` / ``HF_DATASETS_OFFLINE`` set to a true
value, ``set_offline()`` (what ``--offline`` does), or the Hub not answering one short TCP connect (decided
once per process). Offline, nothing waits on the network: a model or tokenizer that is neither a local
directory nor in the local Hugging Face cache is a one-line error at once (not 20-80 s of retries), and
what is cached is loaded inside ``hub_offline()``, which switches the Hugging Face libraries to offline
mode for the duration of the call. Library code never writes ``os.environ``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from pathlib import Path
from typing import Iterator

from flanbuild.errors import FlanbuildError

_TRUE = ("1", "true", "yes", "on")
_STATE: dict[str, bool] = {}
_LOCK = threading.Lock()


def set_offline(value: bool = True) -> None:
    """Force offline (``--offline``) for this process, or clear the override."""
    if value:
        _STATE["forced"] = True
    else:
        _STATE.pop("forced", None)


def _env_offline() -> bool:
    return any(os.environ.get(k, "").strip().lower() in _TRUE
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"))


def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether the Hugging Face Hub answers, decided once per process (False when offline is asked for).

    One TCP connect with a short timeout: without it, every hub call on a machine without network
    retries for 20-80 s before failing.
    """
    if _STATE.get("forced") or _env_offline():
        return False
    with _LOCK:
        if "reachable" not in _STATE:
            endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
            host = endpoint.split("://", 1)[-1].split("/", 1)[0]
            name, _, port = host.partition(":")
            result: list[bool] = []

            def probe() -> None:
                try:
                    socket.create_connection((name, int(port or 443)), timeout=timeout).close()
                    result.append(True)
                except (OSError, ValueError):
                    result.append(False)

            thread = threading.Thread(target=probe, daemon=True)
            thread.start()
            thread.join(timeout + 0.5)
            _STATE["reachable"] = bool(result and result[0])
        return _STATE["reachable"]


def is_offline() -> bool:
    """Whether flanbuild must not contact the Hub (asked for, or the Hub does not answer)."""
    return not hub_reachable()


def hub_cache_dir() -> Path:
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")).expanduser()
    return Path(os.environ.get("HF_HUB_CACHE", os.environ.get("HUGGINGFACE_HUB_CACHE", home / "hub"))).expanduser()


def in_hub_cache(repo_id: str, kind: str = "model") -> bool:
    """Whether the local Hugging Face hub cache holds a snapshot of ``repo_id`` (checked without imports)."""
    folder = hub_cache_dir() / f"{kind}s--{repo_id.replace('/', '--')}" / "snapshots"
    return folder.is_dir() and any(folder.iterdir())


def require_local(name: str, what: str = "model") -> None:
    """Fail at once, in one line, when ``name`` (a hub id) cannot be loaded here because we are offline.

    A local directory, or a hub id in the local cache, passes; online everything passes.
    """
    if Path(name).expanduser().exists() or not is_offline() or in_hub_cache(name):
        return
    why = "HF_HUB_OFFLINE is set" if _env_offline() else ("--offline was given" if _STATE.get("forced")
                                                          else "the Hugging Face Hub does not answer")
    raise FlanbuildError(f"cannot load {what} {name!r}: offline ({why}) and it is neither a local directory nor "
                         f"in the Hugging Face cache ({hub_cache_dir()}); give a local path, or download it "
                         "once online")


@contextlib.contextmanager
def hub_offline(active: bool | None = None) -> Iterator[None]:
    """Inside: the Hugging Face libraries make no network calls (cache only), when offline (or ``active``).

    Sets the libraries' own offline switches (huggingface_hub, datasets, transformers) and restores them
    on exit; the process environment is left alone.
    """
    if not (is_offline() if active is None else active):
        yield
        return
    import importlib
    import sys

    saved = []
    for module_name, attr in (("huggingface_hub.constants", "HF_HUB_OFFLINE"), ("datasets.config", "HF_HUB_OFFLINE"),
                              ("datasets.config", "HF_DATASETS_OFFLINE"), ("transformers.utils.hub", "_is_offline_mode")):
        if module_name.split(".")[0] not in sys.modules and module_name != "huggingface_hub.constants":
            continue
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        if hasattr(module, attr):
            saved.append((module, attr, getattr(module, attr)))
            setattr(module, attr, True)
    try:
        yield
    finally:
        for module, attr, value in reversed(saved):
            setattr(module, attr, value)
