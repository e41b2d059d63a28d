"""The task registry: clusters and tasks (with their templates), from catalogs or from Python.

A catalog is a directory with ``tasks/`` (cards, plus an optional ``clusters.yaml``) and
``templates/``. The built-in FLAN catalog is found next to the package (source checkout) or inside it
(installed wheel). Extra catalogs (``--catalog DIR``) are loaded after it and may add or override tasks.
The Python API (``register_task``, ``register_cluster``) does the same without files.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Iterable

from flanbuild.errors import FlanbuildError
from flanbuild.catalog.tasks import NAME_RE, Cluster, Task, load_card, parse_clusters
from flanbuild.catalog.templates import Template, load_templates_file
from flanbuild.catalog.yamlio import load_yaml


def builtin_catalog_dir() -> Path:
    """The shipped catalog: ``flanbuild/catalog`` in a wheel, the repository root in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here, here.parent.parent):
        if (candidate / "tasks").is_dir() and (candidate / "templates").is_dir():
            return candidate
    raise FlanbuildError(f"flanbuild's built-in catalog (tasks/, templates/) is missing next to {here}")


class Registry:
    """Clusters and tasks by name. Later registrations override earlier ones of the same name."""

    def __init__(self) -> None:
        self.clusters: dict[str, Cluster] = {}
        self.tasks: dict[str, Task] = {}

    # -- Python API -----------------------------------------------------------------------------
    def register_cluster(self, cluster: Cluster | str, *, title: str = "", also_remove: Iterable[str] = ()) -> Cluster:
        if isinstance(cluster, str):
            cluster = Cluster(cluster, title or cluster, tuple(also_remove))
        if not NAME_RE.match(cluster.name):
            raise FlanbuildError(f"cluster name {cluster.name!r} must match [a-z0-9_]+")
        self.clusters[cluster.name] = cluster
        return cluster

    def register_task(self, task: Task, templates: Iterable[Template] | None = None) -> Task:
        """Add (or replace) a task; ``templates`` replaces the task's own templates when given."""
        if templates is not None:
            task = replace(task, templates=tuple(templates))
        if not NAME_RE.match(task.name):
            raise FlanbuildError(f"task name {task.name!r} must match [a-z0-9_]+")
        if task.cluster not in self.clusters:
            raise FlanbuildError(f"task {task.name}: unknown cluster {task.cluster!r} "
                                 f"(known: {', '.join(sorted(self.clusters))})", where=task.origin or None)
        check_template_fields(task)
        self.tasks[task.name] = task
        return task

    # -- catalogs -------------------------------------------------------------------------------
    def load_catalog(self, directory: Path | str) -> list[str]:
        """Load every card + templates file of a catalog directory; returns the task names loaded."""
        directory = Path(directory).expanduser().resolve()
        tasks_dir, templates_dir = directory / "tasks", directory / "templates"
        if not directory.is_dir():
            raise FlanbuildError(f"catalog directory {directory} does not exist")
        if not tasks_dir.is_dir() and not templates_dir.is_dir():
            raise FlanbuildError(f"catalog directory {directory} has neither tasks/ nor templates/")
        clusters_file = tasks_dir / "clusters.yaml"
        if clusters_file.is_file():
            for cluster in parse_clusters(load_yaml(clusters_file), clusters_file):
                self.register_cluster(cluster)
        templates = {}
        for path in sorted(templates_dir.glob("*.yaml")) if templates_dir.is_dir() else []:
            name, tpls = load_templates_file(path)
            templates[name] = tpls
        loaded = []
        for path in sorted(tasks_dir.glob("*.yaml")) if tasks_dir.is_dir() else []:
            if path.name == "clusters.yaml":
                continue
            task = load_card(path, directory)
            tpls = templates.pop(task.name, None)
            if tpls is None:
                raise FlanbuildError(f"task {task.name}: no templates file {templates_dir / (task.name + '.yaml')}",
                                     where=str(path))
            self.register_task(task, tpls)
            loaded.append(task.name)
        for name, tpls in templates.items():  # templates for a task defined in an earlier catalog
            if name not in self.tasks:
                raise FlanbuildError(f"templates for unknown task {name!r}", where=str(templates_dir / f"{name}.yaml"))
            self.register_task(self.tasks[name], tpls)
            loaded.append(name)
        return loaded

    def copy(self) -> "Registry":
        """A registry with the same clusters and tasks, to extend without touching this one."""
        other = Registry()
        other.clusters, other.tasks = dict(self.clusters), dict(self.tasks)
        return other

    # -- queries --------------------------------------------------------------------------------
    def task(self, name: str) -> Task:
        if name not in self.tasks:
            raise FlanbuildError(f"unknown task {name!r} (see 'flanbuild tasks')")
        return self.tasks[name]

    def check_clusters(self, names: Iterable[str], what: str = "cluster") -> None:
        for name in names:
            if name not in self.clusters:
                raise FlanbuildError(f"unknown {what} {name!r} (known: {', '.join(sorted(self.clusters))})")


def check_template_fields(task: Task) -> None:
    """Every template may use only the task's fields and the renderer-supplied names."""
    allowed = set(task.fields) | ({"answer", "options", "options_block"} if task.is_classification else {"answer"})
    if not task.templates:
        raise FlanbuildError(f"task {task.name} has no templates", where=task.origin or None)
    for template in task.templates:
        unknown = template.names() - allowed
        if unknown:
            raise FlanbuildError(
                f"task {task.name}, template {template.id}: unknown field(s) {', '.join(sorted(unknown))} "
                f"(the task has: {', '.join(sorted(allowed))})", where=template.origin or None)
        if template.inverted and template.shows_options:
            raise FlanbuildError(f"task {task.name}, template {template.id}: an inverted template cannot show "
                                 f"options_block", where=template.origin or None)


_DEFAULT: Registry | None = None


def default_registry() -> Registry:
    """The process-wide registry, holding the built-in catalog (loaded on first use)."""
    global _DEFAULT
    if _DEFAULT is None:
        registry = Registry()
        registry.load_catalog(builtin_catalog_dir())
        _DEFAULT = registry
    return _DEFAULT
