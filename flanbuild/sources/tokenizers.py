"""Tokenizers for length budgets and statistics, loaded once per process (transformers imported lazily)."""

from __future__ import annotations

import functools

from flanbuild.errors import FlanbuildError


@functools.lru_cache(maxsize=4)
def load_tokenizer(name_or_path: str):
    """A transformers tokenizer from the hub or a local directory; a clear error when it cannot load."""
    from flanbuild.sources import offline
    from flanbuild.sources.loader import quiet_libraries

    offline.require_local(name_or_path, "tokenizer")  # offline and not cached: one line now, not 80 s of retries
    quiet_libraries()
    try:
        from transformers import AutoTokenizer

        with offline.hub_offline():
            return AutoTokenizer.from_pretrained(name_or_path)
    except Exception as e:  # noqa: BLE001 - transformers raises many types for "cannot load"
        raise FlanbuildError(f"cannot load tokenizer {name_or_path!r}: {' '.join(str(e).split())[:200]}") from None
