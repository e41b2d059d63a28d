"""flanbuild: build FLAN-style instruction-tuning mixtures.

The public API, imported lazily so that ``import flanbuild`` (and ``flanbuild --help``) stays fast::

    import flanbuild as fb
    result = fb.build(fb.BuildConfig(out="out/mixture", heldout_clusters=...))
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__all__ = [
    "BuildConfig", "BuildResult", "Cluster", "FlanbuildError", "MixConfig", "Registry", "Source", "Task",
    "Template", "build", "default_registry", "load_registry", "register_cluster", "register_task",
]

_WHERE = {
    "BuildConfig": "builder", "BuildResult": "builder", "build": "builder", "load_registry": "builder",
    "Cluster": "catalog.tasks", "Source": "catalog.tasks", "Task": "catalog.tasks", "Template": "catalog.templates",
    "FlanbuildError": "errors", "MixConfig": "pipeline.mixer", "Registry": "catalog.registry",
    "default_registry": "catalog.registry",
}


def register_task(task, templates=None):
    """Add a task to the default registry (the one ``build`` uses when given no registry)."""
    from flanbuild.catalog.registry import default_registry

    return default_registry().register_task(task, templates)


def register_cluster(cluster, **kwargs):
    """Add a cluster to the default registry."""
    from flanbuild.catalog.registry import default_registry

    return default_registry().register_cluster(cluster, **kwargs)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module 'flanbuild' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover
    from flanbuild.builder import BuildConfig, BuildResult, build, load_registry
    from flanbuild.errors import FlanbuildError
    from flanbuild.pipeline.mixer import MixConfig
    from flanbuild.catalog.registry import Registry, default_registry
    from flanbuild.catalog.tasks import Cluster, Source, Task
    from flanbuild.catalog.templates import Template
