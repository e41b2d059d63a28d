"""The dataset card: tables and pictures that render, exact numbers, determinism, streaming stats."""

from __future__ import annotations

import html.parser
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from flanbuild.output.card import _yaml_header, code, md, render_card, write_card
from flanbuild.catalog.registry import Registry
from flanbuild.output.stats import LengthDist, scan
from conftest import read_split, toy_build

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def licensed_registry(toy_catalog: Path) -> Registry:
    """The toy catalog with license/homepage/description on sent_a (text with Markdown-hostile characters)."""
    card = toy_catalog / "tasks" / "sent_a.yaml"
    card.write_text(card.read_text() + "license: CC BY-SA 4.0 | see <terms> & *notes*\n"
                    "homepage: https://example.org/sent_a\n"
                    "description: Toy sentiment [one] with `ticks`. A second sentence that the card leaves out.\n")
    registry = Registry()
    registry.load_catalog(toy_catalog)
    return registry


def toy_out(registry: Registry, out: Path, seed: int = 0, **mix) -> tuple[Path, dict]:
    """A toy build with its pictures (the card tests look at them)."""
    result = toy_build(registry, out, seed=seed, mix=mix, plots=True)
    return result.out, result.manifest


# -- a checker for rendered Markdown --------------------------------------------------------------

class _Html(html.parser.HTMLParser):
    """Tables (rows of cell counts), images and the visible text of an HTML document."""

    def __init__(self):
        super().__init__()
        self.tables: list[list[int]] = []
        self.images: list[str] = []
        self.text: list[str] = []
        self.paragraphs: list[str] = []
        self._cells = None
        self._p = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append(0)
        elif tag in ("td", "th"):
            self.tables[-1][-1] += 1
        elif tag == "img":
            self.images.append(dict(attrs)["src"])
        elif tag == "p":
            self._p = []

    def handle_endtag(self, tag):
        if tag == "p" and self._p is not None:
            self.paragraphs.append("".join(self._p))
            self._p = None

    def handle_data(self, data):
        self.text.append(data)
        if self._p is not None:
            self._p.append(data)


def rendered(card: str) -> tuple[_Html, str]:
    """Render the card's body (after the YAML header) as the Hub does, to HTML; parse it."""
    markdown = pytest.importorskip("markdown")

    body = re.sub(r"\A---\n.*?\n---\n", "", card, flags=re.S)
    page = markdown.markdown(body, extensions=["tables", "fenced_code"])
    parser = _Html()
    parser.feed(page)
    return parser, page


def check_renders(card: str, folder: Path) -> _Html:
    """Every pipe table renders as a table with the same number of cells in every row; images exist."""
    doc, page = rendered(card)
    body = re.sub(r"\A---\n.*?\n---\n", "", card, flags=re.S)
    outside_code = re.sub(r"^(`{3,}).*?^\1\s*$", "", body, flags=re.S | re.M)
    n_tables = len(re.findall(r"^\| *-{3,}:? *\|", outside_code, flags=re.M))
    assert len(doc.tables) == n_tables > 0, "a pipe table did not render as a table"
    for rows in doc.tables:
        assert len(rows) >= 2 and len(set(rows)) == 1, f"ragged table: cells per row {rows}"
    for p in doc.paragraphs:
        assert not p.lstrip().startswith("|"), f"table text rendered as a paragraph: {p[:80]!r}"
    for src in doc.images:
        assert not src.startswith(("/", "http")), src
        data = (folder / src).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5_000
    assert "<script" not in page
    return doc


# -- tests ----------------------------------------------------------------------------------------

def test_card_tables_pictures_and_numbers(toy_catalog, tmp_path):
    (toy_catalog / "data" / "sent_b_train.jsonl").unlink()  # a skipped task
    registry = licensed_registry(toy_catalog)
    out, manifest = toy_out(registry, tmp_path / "out")
    write_card(out, manifest, registry.tasks)
    card = (out / "README.md").read_text()
    doc = check_renders(card, out)
    assert sorted(doc.images) == ["composition.png", "lengths.png"]
    text = " ".join(" ".join(doc.text).split())

    # the YAML header is unchanged in substance: splits, exact counts and sizes
    assert card.startswith(_yaml_header(manifest, registry.tasks) + "\n")
    # the Hub's fields, from the tasks: a card licence string becomes its Hugging Face id, others "other"
    header = card.split("\n---\n", 1)[0]
    assert "license:\n- cc-by-sa-4.0\n- other\n" in header and "language:\n- en\n" in header
    assert f"num_examples: {manifest['counts']['train']}" in card
    # how it was made
    assert "Seed" in text or "seed" in text
    assert "`toy_para`" in card and "`para_a`" in card  # removed cluster and its task
    assert manifest["fingerprint"] in card
    # composition: every task row with its count and share
    train = read_split(out, "train")
    for name, t in manifest["tasks"].items():
        assert re.search(rf"\| `{name}` \| `{t['cluster']}` \| {t['role']} \| [\d,]+ \| {t['rows']:,} \|", card), name
    sent_a = train.filter(pc.equal(train.column("task_name"), "sent_a"))
    n_opt = pc.sum(pc.equal(sent_a.column("template_type"), "zs_opt")).as_py()
    assert re.search(rf"\| `sent_a` .*\| {n_opt:,} \|", card)  # template types from the data
    # lengths: exact, from every row
    lens = pc.utf8_length(train.column("inputs")).to_numpy()
    assert re.search(rf"\| train \| `inputs` \| characters \| {lens.mean():,.1f} \| .* \| {lens.max():,} \|", card)
    # examples: 3 per cluster, several tasks when the cluster has several
    sections = re.findall(r"^### (\w+) \((train|eval, held out)\)$", card, flags=re.M)
    assert [s for s, _ in sections] == ["toy_gen", "toy_nli", "toy_sent"]
    sent_examples = card.split("### toy_sent (train)")[1].split("## ")[0]
    assert sent_examples.count("Input:") == 3 and "**sent\\_a**" not in sent_examples
    assert "**sent_a**" in sent_examples or "**sent_b**" in sent_examples
    # sources and licenses, escaped so they render as written
    assert "CC BY-SA 4.0 | see <terms> & *notes*" in text
    assert "Toy sentiment [one] with `ticks`." in text and "second sentence" not in text
    assert "[`sent_a`](https://example.org/sent_a)" in card
    # skipped task with its reason
    assert "sent_b" in manifest["skipped"] and "does not exist" in text
    # loading recipes
    for needle in ("load_dataset(", "pd.read_parquet(", "SFTTrainer", "type: chat_template", "dataset_info.json"):
        assert needle in card, needle


def test_card_from_manifest_alone_and_hostile_text(toy_registry, tmp_path):
    out, manifest = toy_out(toy_registry, tmp_path / "out")
    manifest = json.loads(json.dumps(manifest))
    manifest["skipped"] = {"weird|task": "not at <data-dir>/x | y; more * text [here](x)\nsecond line"}
    card = render_card(manifest)
    doc = check_renders(card, out)
    text = " ".join(" ".join(doc.text).split())
    assert "not at <data-dir>/x | y" in text  # first clause of the reason, literally
    assert doc.images == []  # no stats: no pictures referenced


def test_md_and_code_escaping():
    assert md("a|b <c> *d* [e](f) `g`") == "a\\|b &lt;c&gt; \\*d\\* \\[e\\](f) \\`g\\`"
    assert md("two\nlines  here") == "two lines here"
    assert code("a`b") == "``a`b``"


def test_card_is_byte_reproducible(toy_registry, tmp_path):
    cards = []
    for name in ("a", "b"):
        out, manifest = toy_out(toy_registry, tmp_path / name, seed=5)
        write_card(out, manifest, toy_registry.tasks)
        cards.append({p: (out / p).read_bytes() for p in ("README.md", "composition.png", "lengths.png")})
    assert cards[0] == cards[1]
    out, manifest = toy_out(toy_registry, tmp_path / "c", seed=6)
    write_card(out, manifest, toy_registry.tasks)
    assert (out / "README.md").read_bytes() != cards[0]["README.md"]


def test_card_keeps_files_record_and_loads(toy_registry, tmp_path):
    datasets = pytest.importorskip("datasets")
    out, manifest = toy_out(toy_registry, tmp_path / "out")
    before = (out / "mixture.json").read_bytes()
    write_card(out, manifest, toy_registry.tasks)
    assert (out / "mixture.json").read_bytes() == before  # the PNGs are not in the integrity record
    assert not list(out.glob("*.tmp"))
    ds = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "cache"))
    assert sorted(ds) == ["eval", "train"] and ds["train"].num_rows == manifest["counts"]["train"]


def test_scan_is_exact_and_independent_of_batch_size(toy_registry, tmp_path):
    out, manifest = toy_out(toy_registry, tmp_path / "out", train_size=997)
    a = scan(out, manifest)
    b = scan(out, manifest, batch_rows=7)
    assert a.chars == b.chars and a.template_types == b.template_types and a.examples == b.examples
    for split in ("train", "eval"):
        table = read_split(out, split)
        for col in ("inputs", "targets"):
            lens = pc.utf8_length(table.column(col)).to_numpy()
            d = a.chars[(split, col)]
            assert d.n == len(lens) and d.total == lens.sum() and d.max == lens.max()
            assert d.quantile(0.5) == int(np.sort(lens)[int(np.ceil(0.5 * len(lens))) - 1])
        names = table.column("task_name").to_pylist()
        for task in set(names):
            assert sum(a.template_types[(split, task)].values()) == names.count(task)
    assert set(a.examples) == {"toy_gen", "toy_nli", "toy_sent"} and all(len(v) == 3 for v in a.examples.values())


def test_length_quantiles():
    rng = np.random.default_rng(0)
    values = rng.integers(1, 500, size=10_001)
    d = LengthDist()
    d.add(values[:5000])
    d.add(values[5000:])
    s = np.sort(values)
    for q in (0.01, 0.5, 0.95, 1.0):
        assert d.quantile(q) == s[int(np.ceil(q * len(s))) - 1]
    assert d.mean == pytest.approx(values.mean()) and d.max == values.max()


def tiny_tokenizer_json(path: Path, texts: list[str]) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tk = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    path.mkdir(parents=True, exist_ok=True)
    tk.save(str(path / "tokenizer.json"))
    return path


def test_token_counts_with_a_local_tokenizer(toy_registry, tmp_path):
    out, manifest = toy_out(toy_registry, tmp_path / "out")
    tok = tiny_tokenizer_json(tmp_path / "tok", ["hello world"])
    write_card(out, manifest, toy_registry.tasks, tokenizer=str(tok))
    card = (out / "README.md").read_text()
    check_renders(card, out)
    # whitespace words: every row of the toy data is small, so the sample is the whole split
    train = read_split(out, "train")
    words = [len(re.findall(r"\w+|[^\w\s]", s)) for s in train.column("inputs").to_pylist()]
    assert re.search(rf"\| train \| `inputs` \| tokens \| {np.mean(words):,.1f} \| .* \| {max(words):,} \|", card)
    assert "on a deterministic sample" in card and f"train: {train.num_rows:,} of {train.num_rows:,} rows" in card
    # the share of rows past common context lengths (toy rows are short: none past 512 tokens)
    assert "| train | `inputs` | 0.0% | 0.0% | 0.0% |" in card and "| > 512 | > 1,024 | > 2,048 |" in card
    from PIL import Image

    assert Image.open(out / "lengths.png").size[1] > 600  # a second row of histograms (tokens)


def test_token_sample_is_deterministic(toy_registry, tmp_path):
    out, manifest = toy_out(toy_registry, tmp_path / "out")
    tok = str(tiny_tokenizer_json(tmp_path / "tok", ["hello world"]))
    a = scan(out, manifest, tokenizer=tok, token_sample=50, batch_rows=7)
    b = scan(out, manifest, tokenizer=tok, token_sample=50, batch_rows=1000)
    assert a.token_sample == {"train": 50, "eval": 50} and a.tokens == b.tokens
    c = scan(out, {**manifest, "config": {**manifest["config"], "seed": 1}}, tokenizer=tok, token_sample=50)
    assert c.tokens != a.tokens  # another seed, another sample


def test_bad_tokenizer_is_one_line_error(toy_registry, tmp_path):
    from flanbuild.errors import FlanbuildError

    out, manifest = toy_out(toy_registry, tmp_path / "out")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(FlanbuildError, match="cannot read tokenizer"):
        write_card(out, manifest, tokenizer=str(bad))


def test_write_card_imports_no_torch(toy_registry, tmp_path):
    out, manifest = toy_out(toy_registry, tmp_path / "out")
    code_ = ("import sys, json; from pathlib import Path; from flanbuild.output.card import write_card; "
             f"out = Path({str(out)!r}); write_card(out, json.loads((out / 'mixture.json').read_text()), plots=False);"
             "print(sorted(m for m in ('torch', 'matplotlib', 'transformers', 'datasets') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code_], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_pictures_look_like_the_data(toy_registry, tmp_path):
    """The composition chart grows with the number of tasks; both pictures are real PNGs."""
    from PIL import Image

    from flanbuild.output.plots import composition_png

    out, manifest = toy_out(toy_registry, tmp_path / "out")
    small = composition_png(tmp_path / "small.png", manifest)
    many = json.loads(json.dumps(manifest))
    for i in range(20):
        many["tasks"][f"extra_{i}"] = {**manifest["tasks"]["sent_a"], "rows": 10 + i}
    big = composition_png(tmp_path / "big.png", many)
    assert Image.open(big).size[1] > Image.open(small).size[1] + 300
    assert Image.open(small).size[0] == 900


def test_card_of_a_build_without_eval_data(toy_catalog, tmp_path):
    for name in ("nli_a", "nli_b"):
        (toy_catalog / "data" / f"{name}_eval.jsonl").unlink()
    registry = Registry()
    registry.load_catalog(toy_catalog)
    result = toy_build(registry, tmp_path / "out", plots=True, allow_empty_split=True)  # else an error
    out, manifest = result.out, result.manifest
    assert manifest["counts"]["eval"] == 0
    write_card(out, manifest, registry.tasks)
    card = (out / "README.md").read_text()
    check_renders(card, out)
    assert "### toy_nli" not in card and "| eval | `inputs`" not in card


def test_readme_columns_table_is_the_cards():
    """README.md and every card describe the columns from one definition (render.COLUMN_DOCS)."""
    import re

    from conftest import REPO
    from flanbuild.output.card import columns_markdown

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = re.search(r"<!-- columns:start -->\n(.*?)\n<!-- columns:end -->", readme, re.S).group(1)
    assert table == columns_markdown(), "regenerate README's table: flanbuild.output.card.columns_markdown()"


def test_pictures_of_the_same_numbers_come_from_the_cache(toy_registry, tmp_path, monkeypatch):
    """A picture is named by what it shows: the same numbers copy it (same bytes, nothing drawn); a
    changed number draws it again."""
    from flanbuild.output import plots
    from flanbuild.output.stats import scan

    out, manifest = toy_out(toy_registry, tmp_path / "out")
    stats, cache = scan(out, manifest), tmp_path / "cache"
    for d in ("a", "b", "c"):
        (tmp_path / d).mkdir()
    plots.write_plots(tmp_path / "a", manifest, stats, cache)
    assert len(list((cache / "plots").rglob("*.png"))) == 2

    def not_drawn(*_):
        raise AssertionError("drawn instead of copied")

    monkeypatch.setattr(plots, "composition_png", not_drawn)
    monkeypatch.setattr(plots, "lengths_png", not_drawn)
    plots.write_plots(tmp_path / "b", manifest, stats, cache)
    for name in (plots.COMPOSITION_PNG, plots.LENGTHS_PNG):
        assert (tmp_path / "b" / name).read_bytes() == (tmp_path / "a" / name).read_bytes()
    changed = json.loads(json.dumps(manifest))
    changed["tasks"]["sent_a"]["rows"] += 1
    with pytest.raises(AssertionError, match="drawn instead of copied"):
        plots.write_plots(tmp_path / "c", changed, stats, cache)
