"""Safe YAML loading that remembers line numbers.

Cards, templates and recipes are untrusted, hand-written data, so they are loaded with ``yaml.SafeLoader``
only, and every mapping remembers the line of each key: an error can then say ``tasks/x.yaml:12``.
Hostile files are refused before they cost anything: only regular files are read (no FIFOs or devices,
no symlinks leading outside the catalog), at most ``MAX_YAML_BYTES``, and YAML aliases are refused
(an alias bomb expands a few lines into billions of nodes).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from flanbuild.errors import FlanbuildError

MAX_YAML_BYTES = 4 << 20  # a card, templates file or recipe larger than this is refused


class LineDict(dict):
    """A dict from YAML that knows the (1-based) line of itself and of each of its keys."""

    line: int = 0
    key_lines: dict[str, int]

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)


# libyaml's C parser when available (about 5x faster on the 160+ catalog files); both keep line marks.
class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    pass


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    result = LineDict()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, (str, int, float, bool)) and key is not None:
            raise yaml.constructor.ConstructorError(
                None, None, "mapping keys must be plain scalars", key_node.start_mark
            )
        if key in result:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = key_node.start_mark.line + 1
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _construct_object_once(self, node, deep=False):
    """Each YAML node is constructed once: a second use of a node is an alias (``*name``), refused."""
    if node in self.constructed_objects or node in self.recursive_objects:
        raise yaml.constructor.ConstructorError(None, None, "YAML aliases (*name) are not allowed in catalogs "
                                                "and recipes", node.start_mark)
    return yaml.constructor.BaseConstructor.construct_object(self, node, deep)


_Loader.construct_object = _construct_object_once


def read_untrusted(path: Path | str, root: Path | str | None = None, limit: int = MAX_YAML_BYTES) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (inside ``root`` when given, symlinks resolved).

    FIFOs, devices and directories are refused without blocking (the file is opened non-blocking and
    checked with fstat before reading).
    """
    path = Path(path)
    if root is not None:
        from flanbuild.catalog.untrusted import confined

        try:
            rel = os.path.relpath(path, root)
        except ValueError:
            rel = str(path)
        if confined(Path(root), rel) is None:
            raise FlanbuildError(f"refusing a file that leads outside the catalog directory {root} (a symlink?)",
                                 where=str(path))
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise FlanbuildError(f"cannot read file: {e.strerror}", where=str(path)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FlanbuildError("not a regular file (a FIFO, device or directory); refusing to read it", where=str(path))
        if st.st_size > limit:
            raise FlanbuildError(f"file is larger than {limit} bytes ({st.st_size}); refusing to read it", where=str(path))
        chunks, size = [], 0
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise FlanbuildError(f"file is larger than {limit} bytes; refusing to read it", where=str(path))
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as e:
        raise FlanbuildError(f"cannot read file: {e.strerror}", where=str(path)) from None
    finally:
        os.close(fd)


def load_yaml(path: Path, root: Path | str | None = None) -> Any:
    """Parse one YAML file; any problem becomes a one-line FlanbuildError naming file and line."""
    try:
        text = read_untrusted(path, root).decode("utf-8")
    except UnicodeDecodeError as e:
        raise FlanbuildError(f"not UTF-8 text (byte {e.start})", where=str(path)) from None
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark else ""
        problem = " ".join(str(e.problem or e.context or "invalid YAML").split())
        raise FlanbuildError(f"invalid YAML: {problem}", where=f"{path}{line}") from None
    except yaml.YAMLError as e:
        raise FlanbuildError(f"invalid YAML: {' '.join(str(e).split())}", where=str(path)) from None
    except RecursionError:
        raise FlanbuildError("invalid YAML: nested too deeply", where=str(path)) from None


def where(path: Path | str, mapping: Any = None, key: str | None = None) -> str:
    """``path:line`` for a key of a LineDict (or for the mapping itself), ``path`` otherwise."""
    if isinstance(mapping, LineDict):
        return f"{path}:{mapping.line_of(key) if key is not None else mapping.line}"
    return str(path)
