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
from flanbuild.catalog.yamlio import load_yaml, read_untrusted, where


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
        self.overrides: list[dict] = []  # what catalogs replaced explicitly (override: true)

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
        if clusters_file.exists() or clusters_file.is_symlink():
            doc = load_yaml(clusters_file, directory)
            for cluster in parse_clusters(doc, clusters_file):
                spec = doc["clusters"][cluster.name] or {}
                self._check_override("cluster", cluster.name, spec.get("override", False),
                                     where(clusters_file, doc["clusters"], cluster.name), directory)
                self.register_cluster(cluster)
        templates, template_overrides = {}, {}
        for path in sorted(templates_dir.glob("*.yaml")) if templates_dir.is_dir() else []:
            name, tpls, template_overrides[name] = load_templates_file(path, directory, with_override=True)
            templates[name] = tpls
        loaded = []
        for path in sorted(tasks_dir.glob("*.yaml")) if tasks_dir.is_dir() else []:
            if path.name == "clusters.yaml":
                continue
            read_untrusted(path, directory)  # a regular file inside the catalog, of bounded size
            task = load_card(path, directory)
            self._check_override("task", task.name, getattr(task, "override", False), str(path), directory)
            tpls = templates.pop(task.name, None)
            if tpls is None:
                raise FlanbuildError(f"task {task.name}: no templates file {templates_dir / (task.name + '.yaml')}",
                                     where=str(path))
            self.register_task(task, tpls)
            loaded.append(task.name)
        for name, tpls in templates.items():  # templates for a task defined in an earlier catalog
            if name not in self.tasks:
                raise FlanbuildError(f"templates for unknown task {name!r}", where=str(templates_dir / f"{name}.yaml"))
            self._check_override("templates of task", name, template_overrides[name],
                                 str(templates_dir / f"{name}.yaml"), directory)
            self.register_task(self.tasks[name], tpls)
            loaded.append(name)
        return loaded

    def _check_override(self, kind: str, name: str, override: bool, loc: str, catalog: Path) -> None:
        """A catalog replaces an existing cluster/task/templates only with an explicit ``override: true``
        (recorded in ``overrides``, hence in mixture.json and the dataset card)."""
        exists = name in (self.clusters if kind == "cluster" else self.tasks)
        if kind == "templates of task":
            exists = True
        if not exists:
            return
        if not override:
            raise FlanbuildError(f"{kind} {name} is already defined (built in or by an earlier catalog); a catalog "
                                 f"replaces it only with 'override: true'", where=loc)
        self.overrides.append({"kind": kind.split()[0], "name": name, "catalog": str(catalog), "file": loc})

    def copy(self) -> "Registry":
        """A registry with the same clusters and tasks, to extend without touching this one."""
        other = Registry()
        other.clusters, other.tasks = dict(self.clusters), dict(self.tasks)
        other.overrides = list(self.overrides)
        return other

    # -- queries --------------------------------------------------------------------------------
    def task(self, name: str) -> Task:
        if name not in self.tasks:
            from flanbuild.errors import unknown

            raise unknown("task", name, self.tasks)
        return self.tasks[name]

    def check_clusters(self, names: Iterable[str], what: str = "cluster") -> None:
        for name in names:
            if name not in self.clusters:
                from flanbuild.errors import unknown

                raise unknown(what, name, self.clusters)


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
