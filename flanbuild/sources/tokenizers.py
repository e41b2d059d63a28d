"""Tokenizers for length budgets and statistics, loaded once per process (transformers imported lazily)."""

from __future__ import annotations

import functools

from flanbuild.errors import FlanbuildError


@functools.lru_cache(maxsize=4)
def load_tokenizer(name_or_path: str):
    """A transformers tokenizer from the hub or a local directory; a clear error when it cannot load."""
    from flanbuild.sources.loader import hub_reachable, quiet_libraries

    quiet_libraries()
    if not hub_reachable():
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(name_or_path)
    except Exception as e:  # noqa: BLE001 - transformers raises many types for "cannot load"
        raise FlanbuildError(f"cannot load tokenizer {name_or_path!r}: {' '.join(str(e).split())[:200]}") from None
