"""Super-NaturalInstructions (NIv2) tasks as flanbuild tasks.

NIv2 (Wang et al., 2022) gives each task as a JSON file: a natural-language definition, positive (and
negative) examples, and instances. Each task becomes a generation task whose rows are its instances;
the instruction is the definition plus 0-2 positive examples (with or without their explanations),
in five templates. The official split is respected: tasks listed in ``splits/default/test_tasks.txt``
are never trained on (they can only be evaluated, when their cluster is held out). Categories map to
flanbuild clusters by ``CATEGORY_CLUSTERS``; anything else goes to ``misc``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa

from flanbuild.errors import FlanbuildError
from flanbuild.catalog.tasks import Source, Task
from flanbuild.catalog.templates import Template

CATEGORY_CLUSTERS = {
    "Textual Entailment": "nli",
    "Paraphrasing": "paraphrase",
    "Text Matching": "paraphrase",
    "Sentiment Analysis": "sentiment",
    "Coreference Resolution": "coreference",
    "Cause Effect Classification": "commonsense",
    "Commonsense Classification": "commonsense",
    "Question Answering": "reading_comprehension",
    "Answer Verification": "reading_comprehension",
    "Summarization": "summarization",
    "Title Generation": "summarization",
    "Translation": "translation",
    "Data to Text": "struct_to_text",
    "Word Analogy": "misc",
}
DEFAULT_CLUSTER = "misc"

_HEAD = "Definition: {{definition}}\n\n"
_QUERY = "Now complete the following example.\nInput: {{input}}\nOutput:"
_EX = "Example {n}:\nInput: {{{{ex{n}_input}}}}\nOutput: {{{{ex{n}_output}}}}\n"
_EXPL = "Explanation: {{{{ex{n}_explanation}}}}\n"
TEMPLATES = {  # id -> (positive examples needed, input template)
    1: (0, _HEAD + "Input: {{input}}\nOutput:"),
    2: (0, "{{definition}}\n\n{{input}}"),
    3: (1, _HEAD + _EX.format(n=1) + "\n" + _QUERY),
    4: (2, _HEAD + _EX.format(n=1) + "\n" + _EX.format(n=2) + "\n" + _QUERY),
    5: (2, _HEAD + _EX.format(n=1) + _EXPL.format(n=1) + "\n" + _EX.format(n=2) + _EXPL.format(n=2) + "\n" + _QUERY),
}


def _task_name(stem: str) -> str:
    return "niv2_" + re.sub(r"[^a-z0-9_]+", "_", stem.lower()).strip("_")


def _read_split_list(path: Path) -> set[str]:
    return {line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()} if path.is_file() else set()


def load_niv2(root: Path | str) -> list[Task]:
    """Every task JSON under ``root/tasks`` (official split lists under ``root/splits/default``)."""
    root = Path(root)
    task_dir = root / "tasks" if (root / "tasks").is_dir() else root
    files = sorted(task_dir.glob("task*.json"))
    if not files:
        raise FlanbuildError(f"no NIv2 task files (task*.json) in {task_dir}")
    test = _read_split_list(root / "splits" / "default" / "test_tasks.txt")
    return [_load_task(path, path.stem in test) for path in files]


def _load_task(path: Path, is_test: bool) -> Task:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        definition = " ".join(doc["Definition"]).strip()
        positives = [p for p in doc.get("Positive Examples") or [] if p.get("input") and p.get("output")][:2]
        instances = doc["Instances"]
        categories = list(doc.get("Categories") or [])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise FlanbuildError(f"not a NIv2 task file: {type(e).__name__}: {e}", where=str(path)) from None
    cluster = next((CATEGORY_CLUSTERS[c] for c in categories if c in CATEGORY_CLUSTERS), DEFAULT_CLUSTER)
    n = len(instances)
    columns = {
        "id": [str(i.get("id", k)) for k, i in enumerate(instances)],
        "input": [str(i["input"]) for i in instances],
        "outputs": [[str(o) for o in (i["output"] if isinstance(i["output"], list) else [i["output"]])] for i in instances],
        "definition": [definition] * n,
    }
    for k in (1, 2):
        ex = positives[k - 1] if len(positives) >= k else {}
        columns[f"ex{k}_input"] = [str(ex.get("input", ""))] * n
        columns[f"ex{k}_output"] = [str(ex.get("output", ""))] * n
        columns[f"ex{k}_explanation"] = [str(ex.get("explanation", ""))] * n
    table = pa.table(columns)
    fields = {c: c for c in columns if c not in ("id", "outputs")}
    templates = tuple(Template(tid, body, "{{answer}}", origin=f"niv2 template {tid}")
                      for tid, (needed, body) in TEMPLATES.items() if len(positives) >= needed)
    role = "eval" if is_test else "train"
    return Task(
        name=_task_name(path.stem), cluster=cluster, provider="niv2", type="generation", answer="outputs",
        source=Source(tables={role: table}, manual="official NIv2 test task: evaluation only" if is_test else None),
        fields=fields, templates=templates, subcluster="niv2", metric="rouge",
        description=f"Super-NaturalInstructions {path.stem} ({', '.join(categories) or 'no category'})",
        license=doc.get("Instance License", [None])[0] if isinstance(doc.get("Instance License"), list) else None,
        origin=str(path),
    )
