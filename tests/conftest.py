"""Shared fixtures: a small self-contained catalog with local data, and the real mirror when present."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never wait on the Hugging Face Hub
if "FLANBUILD_CACHE" not in os.environ:  # keep the render cache of test builds out of the user's cache
    import tempfile

    os.environ["FLANBUILD_CACHE"] = tempfile.mkdtemp(prefix="flanbuild-test-cache-")

REPO = Path(__file__).resolve().parent.parent
MIRROR = Path(os.environ.get("FLANBUILD_TEST_MIRROR", REPO.parent / "shared" / "data" / "hub"))


@pytest.fixture
def mirror() -> Path:
    if not (MIRROR / "nyu-mll" / "glue").is_dir():
        pytest.skip(f"real data mirror not found at {MIRROR} (set FLANBUILD_TEST_MIRROR)")
    return MIRROR


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


TOY_CLUSTERS = """
clusters:
  toy_nli:
    title: Toy NLI
    also_remove: [toy_para]
  toy_para:
    title: Toy paraphrase
  toy_sent:
    title: Toy sentiment
  toy_gen:
    title: Toy generation
"""


def _card(name, cluster, kind, answer, extra=""):
    return f"""
name: {name}
cluster: {cluster}
source:
  files: {{train: data/{name}_train.jsonl, eval: data/{name}_eval.jsonl}}
fields:
  text: text
type: {kind}
answer: {answer}
{extra}
"""


TEMPLATES_CLS = """
task: {name}
templates:
  - id: 1
    input: |-
      {{{{text}}}}
      What is the label?

      {{{{options_block}}}}
    target: "{{{{answer}}}}"
  - id: 2
    input: |-
      Label this: {{{{text}}}}
      {{{{options_block}}}}
    target: "{{{{answer}}}}"
  - id: 3
    input: "Answer {{{{ options | or_join }}}}. Text: {{{{text}}}}"
    target: "{{{{answer}}}}"
  - id: 4
    inverted: true
    input: "Write a {name} text labelled {{{{answer}}}}."
    target: "{{{{text}}}}"
"""

TEMPLATES_GEN = """
task: {name}
templates:
  - id: 1
    input: "Echo: {{{{text}}}}"
    target: "{{{{answer}}}}"
  - id: 2
    input: "Repeat after me: {{{{text}}}}"
    target: "{{{{answer}}}}"
"""


@pytest.fixture
def toy_catalog(tmp_path: Path) -> Path:
    """A catalog of 5 small tasks in 4 clusters with local JSONL data (no mirror, no hub)."""
    root = tmp_path / "toy"
    write(root / "tasks" / "clusters.yaml", TOY_CLUSTERS)
    specs = [
        ("nli_a", "toy_nli", 40, 30), ("nli_b", "toy_nli", 25, 20), ("para_a", "toy_para", 50, 10),
        ("sent_a", "toy_sent", 300, 20), ("sent_b", "toy_sent", 60, 10),
    ]
    for name, cluster, n_train, n_eval in specs:
        write(root / "tasks" / f"{name}.yaml", _card(name, cluster, "classification", "label",
                                                      'options: ["no", "yes"]\nfilter: "label >= 0"'))
        write(root / "templates" / f"{name}.yaml", TEMPLATES_CLS.format(name=name))
        for split, n in (("train", n_train), ("eval", n_eval)):
            write_jsonl(root / "data" / f"{name}_{split}.jsonl",
                        [{"text": f"{name} {split} sentence number {i}", "label": i % 2} for i in range(n)])
    write(root / "tasks" / "gen_a.yaml", _card("gen_a", "toy_gen", "generation", "refs"))
    write(root / "templates" / "gen_a.yaml", TEMPLATES_GEN.format(name="gen_a"))
    for split, n in (("train", 80), ("eval", 10)):
        write_jsonl(root / "data" / f"gen_a_{split}.jsonl",
                    [{"text": f"gen {split} {i}", "refs": [f"ref {i}", f"alt {i}"]} for i in range(n)])
    return root


@pytest.fixture
def toy_registry(toy_catalog):
    from flanbuild.catalog.registry import Registry

    registry = Registry()
    registry.load_catalog(toy_catalog)
    return registry


# -- building and reading toy mixtures (shared by the test files) ---------------------------------

def toy_build(registry, out: Path, *, mix=None, plots: bool = False, **config):
    """Build with the toy catalog's defaults: toy_nli held out; no pictures unless a test looks at them."""
    from flanbuild.builder import BuildConfig, build
    from flanbuild.pipeline.mixer import MixConfig

    if mix is None or isinstance(mix, dict):
        mix = MixConfig(**{"heldout": ("toy_nli",), **(mix or {})})
    return build(BuildConfig(out=out, mix=mix, plots=plots, **config), registry=registry)


def memory_registry(rows: int):
    """A registry of two in-memory tasks (Python API tables, no files): mem_qa (train, cluster qa) and
    mem_held (eval, cluster held), ``rows`` rows each, one template."""
    import pyarrow as pa

    from flanbuild.catalog.registry import Registry
    from flanbuild.catalog.tasks import Source, Task
    from flanbuild.catalog.templates import Template

    registry = Registry()
    registry.register_cluster("qa")
    registry.register_cluster("held")
    for name, cluster, role in (("mem_qa", "qa", "train"), ("mem_held", "held", "eval")):
        table = pa.table({"q": [f"{name} question {i}" for i in range(rows)], "a": [f"answer {i}" for i in range(rows)]})
        registry.register_task(Task(name=name, cluster=cluster, source=Source(tables={role: table}), fields={"q": "q"},
                                    type="generation", answer="a"), [Template(1, "Q: {{q}}", "{{answer}}")])
    return registry


def read_split(out: Path, split: str):
    """All rows of one split of a build, as one pyarrow Table (shards in order)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pa.concat_tables(pq.read_table(p) for p in sorted((Path(out) / "data").glob(f"{split}-*.parquet")))


def add_sst_like(catalog: Path, texts: list[str]) -> None:
    """A small SST-like task (``sst_like``, hub id ``someone/toy_sst``) in a toy catalog: the card that
    promptsource tests attach P3 templates to, with one template of ours and local rows."""
    write(catalog / "tasks" / "sst_like.yaml", """
        name: sst_like
        cluster: toy_sent
        source:
          hub: someone/toy_sst
          splits: {train: train}
          files: {train: data/sst_like.jsonl}
        features: {text: string, label: int64}
        fields: {text: text}
        type: classification
        options: [negative, positive]
        answer: label
    """)
    write(catalog / "templates" / "sst_like.yaml",
          "task: sst_like\ntemplates:\n  - {id: 1, input: '{{text}} {{options_block}}', target: '{{answer}}'}\n")
    write_jsonl(catalog / "data" / "sst_like.jsonl", [{"text": t, "label": i % 2} for i, t in enumerate(texts)])

