"""Checks for values that come from untrusted catalogs (cards, templates, recipes) before they are used.

A third-party catalog decides hub ids, configs, split and file names, and every one of them ends up in
a path. This module decides what such a value may look like (a Hub id is ``name`` or ``org/name``, never
a local path), confines paths built from them to their root (data dir, catalog dir, cache dir), checks
the types of card fields (no silent stringification of ``description: {a: b}``), and escapes names for
one-line error messages.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from flanbuild.errors import FlanbuildError

#: A Hugging Face Hub dataset id: ``name`` or ``org/name`` (letters, digits, ``-``, ``_``, ``.``).
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")
#: A dataset config or split name, as a path component (no separators, no leading dot).
NAME_PART_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+=-]{0,127}$")


def escape(text: Any) -> str:
    """A name as it may appear in a one-line message: control characters (newlines...) escaped."""
    s = str(text)
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)


def is_hub_id(value: Any) -> bool:
    return isinstance(value, str) and bool(HUB_ID_RE.match(value)) and ".." not in value


def check_hub_id(value: Any, what: str, loc: str) -> str:
    """A Hub id (``name`` or ``org/name``), never a path (``..``, absolute, more than one ``/``)."""
    if not is_hub_id(value):
        raise FlanbuildError(f"{what} must be a Hugging Face Hub id ('name' or 'org/name', no '..' or absolute "
                             f"paths), got {escape(repr(value))}", where=loc)
    return value


def check_name_part(value: Any, what: str, loc: str) -> str:
    """A config or split name usable as one path component."""
    if not isinstance(value, str) or not NAME_PART_RE.match(value) or ".." in value:
        raise FlanbuildError(f"{what} must be a plain name (letters, digits, '_', '-', '.'; no '/' or '..'), "
                             f"got {escape(repr(value))}", where=loc)
    return value


def confined(root: Path, *parts: str) -> Path | None:
    """``root/parts...`` resolved, or None when it would leave ``root`` (``..``, absolute parts, symlinks)."""
    root_resolved = Path(root).resolve()
    for part in parts:
        if os.path.isabs(part) or ".." in Path(part).parts:
            return None
    path = root_resolved.joinpath(*parts).resolve()
    return path if path == root_resolved or path.is_relative_to(root_resolved) else None


# -- card field types ------------------------------------------------------------------------------

_TEXT_KEYS = ("description", "homepage", "license", "subcluster", "cluster", "metric")
_SOURCE_TEXT_KEYS = ("hub", "config", "revision", "manual", "mirror_id")
NULL_POLICIES = ("error", "skip")


def check_card_types(doc: Any, path: Path | str) -> None:
    """Card fields have the types the card format says; nothing is stringified silently.

    Runs before the card is parsed (``doc`` is a LineDict from ``yamlio``): text fields are strings,
    ``source`` names are Hub ids / plain names, ``splits`` and ``files`` map roles to strings (or a
    carve mapping), ``nulls`` and ``override`` are valid.
    """
    if not isinstance(doc, dict):
        return
    name = doc.get("name")
    task = f"task {escape(name)}: " if isinstance(name, str) else ""
    _check_top_level(doc, path, task)
    if isinstance(doc.get("source"), dict):
        _check_source(doc["source"], where(path, doc, "source"), task)


def where(path: Path | str, mapping: Any = None, key: str | None = None) -> str:
    """``path:line`` of a key of a yamlio LineDict (the same as ``yamlio.where``, without importing it)."""
    line_of = getattr(mapping, "line_of", None)
    return f"{path}:{line_of(key)}" if line_of is not None else str(path)


def _check_top_level(doc: dict, path: Path | str, task: str) -> None:
    for key in _TEXT_KEYS:
        value = doc.get(key)
        if value is not None and not isinstance(value, str):
            raise FlanbuildError(f"{task}'{key}' must be a string, got {type(value).__name__} {escape(repr(value))[:80]}",
                                 where=where(path, doc, key))
    nulls = doc.get("nulls")
    if nulls is not None and nulls not in NULL_POLICIES:
        raise FlanbuildError(f"{task}'nulls' must be one of {', '.join(NULL_POLICIES)} (what to do with a row whose "
                             f"text field is null), got {escape(repr(nulls))}", where=where(path, doc, "nulls"))
    override = doc.get("override")
    if override is not None and not isinstance(override, bool):
        raise FlanbuildError(f"{task}'override' must be true or false", where=where(path, doc, "override"))
    for key in ("answer", "filter"):
        value = doc.get(key)
        if value is not None and not isinstance(value, str):
            raise FlanbuildError(f"{task}'{key}' must be a Jinja expression string, got {type(value).__name__}",
                                 where=where(path, doc, key))


def _check_source(source: dict, loc: str, task: str) -> None:
    for key in _SOURCE_TEXT_KEYS:
        value = source.get(key)
        if value is not None and not isinstance(value, str):
            raise FlanbuildError(f"{task}source.{key} must be a string, got {type(value).__name__} "
                                 f"{escape(repr(value))[:80]}", where=loc)
    if source.get("hub") is not None:
        check_hub_id(source["hub"], f"{task}source.hub", loc)
    if source.get("config") is not None:
        check_name_part(source["config"], f"{task}source.config", loc)
    mirror_id = source.get("mirror_id")
    if isinstance(mirror_id, str):
        parts = mirror_id.strip("/").split("/")
        check_hub_id("/".join(parts[:2]), f"{task}source.mirror_id", loc)
        if len(parts) == 3:
            check_name_part(parts[2], f"{task}source.mirror_id config", loc)
    for key in ("splits", "files"):
        mapping = source.get(key)
        if isinstance(mapping, dict):
            _check_roles(mapping, key, loc, task)


def _check_roles(mapping: dict, key: str, loc: str, task: str) -> None:
    for role, value in mapping.items():
        if key == "splits" and isinstance(value, dict):
            frm = value.get("from")
            if isinstance(frm, str):
                check_name_part(frm, f"{task}source.splits.{escape(role)}.from", loc)
            continue
        if not isinstance(value, str):
            raise FlanbuildError(f"{task}source.{key}.{escape(role)} must be a string, got {type(value).__name__} "
                                 f"{escape(repr(value))[:80]}", where=loc)
        if key == "splits":
            check_name_part(value.split("[", 1)[0], f"{task}source.splits.{escape(role)}", loc)
