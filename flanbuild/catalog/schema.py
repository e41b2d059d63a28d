"""Source schemas in the compact form task cards declare them in.

A card declares its source's features (``string``, ``{class_label: [...]}``, ``[X]``, ``{col: X}``) so
that templates can be linted without downloading anything. This module parses that form, converts the
Hugging Face feature metadata found in real data to the same form (so the two can be compared), and
synthesises rows from a schema for the data-free linter.
"""

from __future__ import annotations

import random
from typing import Any

from flanbuild.errors import FlanbuildError

# The compact form, as plain data: a dtype name (str), {"class_label": [names]}, [inner], or {col: feature}.
Feature = Any
Features = dict[str, Feature]

VALUE_DTYPES = {
    "string", "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64",
}
_DTYPE_ALIASES = {"large_string": "string", "double": "float64", "float": "float32", "bool_": "bool"}


def parse_features(obj: Any, where: str) -> Features:
    """Validate a card's ``features:`` mapping; return it as plain dicts/lists/strings."""
    if not isinstance(obj, dict) or not obj:
        raise FlanbuildError("features must be a non-empty mapping of column -> type", where=where)
    return {str(k): _parse(v, f"{where} (feature {k!r})") for k, v in obj.items()}


def _parse(obj: Any, where: str) -> Feature:
    if isinstance(obj, str):
        dtype = _DTYPE_ALIASES.get(obj, obj)
        if dtype not in VALUE_DTYPES:
            raise FlanbuildError(f"unknown type {obj!r} (one of {', '.join(sorted(VALUE_DTYPES))})", where=where)
        return dtype
    if isinstance(obj, list):
        if len(obj) != 1:
            raise FlanbuildError("a list type is written [inner_type] with exactly one inner type", where=where)
        return [_parse(obj[0], where)]
    if isinstance(obj, dict):
        if set(obj) == {"class_label"}:
            names = obj["class_label"]
            if not isinstance(names, list) or not names or not all(isinstance(n, (str, int)) for n in names):
                raise FlanbuildError("class_label needs a non-empty list of names", where=where)
            return {"class_label": [str(n) for n in names]}
        if not obj:
            raise FlanbuildError("a struct type needs at least one field", where=where)
        return {str(k): _parse(v, where) for k, v in obj.items()}
    raise FlanbuildError(f"cannot read type {obj!r}", where=where)


def from_hf(features: dict) -> Features:
    """Hugging Face ``Features.to_dict()`` JSON (as stored in Parquet metadata) -> compact form."""
    return {name: _from_hf(spec) for name, spec in features.items()}


def _from_hf(spec: Any) -> Feature:
    if isinstance(spec, list):  # legacy: [feature] means a list of it
        return [_from_hf(spec[0])]
    kind = spec.get("_type") if isinstance(spec, dict) else None
    if kind == "Value":
        return _DTYPE_ALIASES.get(spec["dtype"], spec["dtype"])
    if kind == "ClassLabel":
        names = spec["names"]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"ClassLabel names must be a list of strings, got {type(names).__name__}")
        return {"class_label": list(names)}
    if kind in ("List", "LargeList", "Sequence"):
        inner = spec["feature"]
        if kind == "Sequence" and isinstance(inner, dict) and "_type" not in inner:
            return {k: [_from_hf(v)] for k, v in inner.items()}  # Sequence of dict == dict of lists
        return [_from_hf(inner)]
    if kind == "Translation":
        return {lang: "string" for lang in spec["languages"]}
    if kind is None and isinstance(spec, dict):
        return {k: _from_hf(v) for k, v in spec.items()}
    return f"<{kind}>"  # an exotic feature (Image, Audio...): shown in diffs, never rendered


def from_arrow(schema) -> Features:
    """A pyarrow schema -> compact form (no ClassLabel names: Arrow does not know them)."""
    import pyarrow as pa

    def conv(t):
        if pa.types.is_struct(t):
            return {t.field(i).name: conv(t.field(i).type) for i in range(t.num_fields)}
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            return [conv(t.value_type)]
        return _DTYPE_ALIASES.get(str(t), str(t))

    return {f.name: conv(f.type) for f in schema}


def class_names(features: Features | None, column: str) -> list[str] | None:
    """ClassLabel names of a top-level column, if it is one."""
    feat = (features or {}).get(column)
    return list(feat["class_label"]) if isinstance(feat, dict) and set(feat) == {"class_label"} else None


def diff(declared: Features, actual: Features) -> list[str]:
    """Human-readable differences between a declared and an actual schema (empty when they agree)."""
    out = []
    for name in declared.keys() - actual.keys():
        out.append(f"column {name!r} declared but not in the data")
    for name in actual.keys() - declared.keys():
        out.append(f"column {name!r} in the data but not declared")
    for name in declared.keys() & actual.keys():
        if _normalise(declared[name]) != _normalise(actual[name]):
            out.append(f"column {name!r}: declared {declared[name]!r}, data has {actual[name]!r}")
    if not out and list(declared) != list(actual):
        out.append(f"column order: declared {list(declared)}, data has {list(actual)}")
    return sorted(out)


def _normalise(f: Feature) -> Feature:
    if isinstance(f, dict) and set(f) == {"class_label"}:
        return f
    if isinstance(f, dict):
        return {k: _normalise(v) for k, v in f.items()}
    if isinstance(f, list):
        return [_normalise(f[0])]
    return f


_WORDS = (
    "river stone blue quietly market seven lamp garden winter question bright orange table doctor "
    "planet music slowly window forest engine yellow harbor silver letter mountain paper coffee"
).split()


def synthesise(features: Features, index: int) -> dict:
    """A deterministic, type-correct fake row (row ``index`` of a made-up dataset)."""
    rng = random.Random(f"flanbuild-synth-{index}")
    return {name: _fake(feat, name, rng) for name, feat in features.items()}


def _fake(feat: Feature, name: str, rng: random.Random) -> Any:
    if isinstance(feat, list):
        return [_fake(feat[0], name, rng) for _ in range(rng.randint(2, 4))]
    if isinstance(feat, dict) and set(feat) == {"class_label"}:
        return rng.randrange(len(feat["class_label"]))  # rows differ in label too (seeded per row)
    if isinstance(feat, dict):
        # struct of equal-length lists (a hub Sequence of dicts) must stay aligned
        n = rng.randint(2, 4)
        return {
            k: [_fake(v[0], k, rng) for _ in range(n)] if isinstance(v, list) else _fake(v, k, rng)
            for k, v in feat.items()
        }
    if feat == "string":
        return f"{name} " + " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 8)))
    if feat == "bool":
        return rng.random() < 0.5
    if feat.startswith(("int", "uint")):
        return rng.randint(0, 3)
    if feat.startswith("float"):
        return round(rng.uniform(0, 5), 2)
    return None
