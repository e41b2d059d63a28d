"""``flanbuild compare`` end to end on a tiny saved base model (fast; the real configuration is in docs)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft", reason="peft not installed (pip install peft)")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_finetune import _texts, cls_rows, gen_rows, write_mixture  # noqa: E402

from flanbuild.errors import FlanbuildError  # noqa: E402
from flanbuild.cli.main import main as cli_main  # noqa: E402 - the shipped entry point
from flanbuild.finetune.compare import CompareConfig, run_compare  # noqa: E402
from flanbuild.finetune.modeling import build_preset  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmp")
    train = [dict(r, cluster="toy_train") for r in gen_rows()]  # the classification cluster is held out
    mix = write_mixture(root / "mix", train, cls_rows())
    model, tok = build_preset("tiny-llama", _texts())
    model.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    return mix, root / "base", root


def test_compare_writes_table_json_and_plot(setup):
    mix, base, root = setup
    out = root / "exp"
    torch.set_num_threads(1)
    r = run_compare(CompareConfig(data=str(mix), model=str(base), out=str(out), max_steps=3, max_examples=2, shots=1,
                                  batch_size=4, max_input_len=64, max_target_len=16, max_new_tokens=4,
                                  num_virtual_tokens=4, threads=1, quiet=True))
    assert list(r["settings"]) == ["base-0shot", "base-kshot", "full", "lora", "prompt-tuning"]
    saved = json.loads((out / "results.json").read_text())
    for s, v in saved["settings"].items():
        assert set(v["clusters"]) == {"toy_cls"} and v["tasks"]["toy_colour"]["examples"] == 2
        assert 0 <= v["clusters"]["toy_cls"]["mean"] <= v["clusters"]["toy_cls"]["best"] <= 1
        assert (out / "evals" / f"{s}.json").is_file()
    assert saved["settings"]["base-kshot"]["train"] is None and saved["settings"]["lora"]["train"]["global_step"] == 3
    assert saved["settings"]["lora"]["train"]["trainable_parameters"] < saved["settings"]["full"]["train"]["trainable_parameters"]
    assert (out / "runs" / "lora" / "adapter_config.json").is_file() and (out / "runs" / "full" / "model.safetensors").is_file()
    ev = json.loads((out / "evals" / "base-kshot.json").read_text())
    assert ev["settings"]["shots"] == 1 and ev["settings"]["scoring"] == "flan"
    md = (out / "results.md").read_text()
    assert "| toy_cls |" in md and "base-0shot mean" in md and "prompt-tuning best" in md
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_user_mistakes(setup, capsys):
    mix, base, root = setup
    with pytest.raises(FlanbuildError, match="unknown qlora"):
        run_compare(CompareConfig(data=str(mix), model=str(base), out=str(root / "x"), settings=("qlora",)))
    rc = cli_main(["compare", "--data", str(mix), "--model", str(base), "--out", str(root / "x"), "--lr", "lora"])
    err = capsys.readouterr().err
    assert rc == 2 and "--lr expects SETTING=LR" in err and err.count("\n") == 1
