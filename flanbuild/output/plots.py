"""The card's pictures: train composition by cluster and task, and length histograms (PNG).

matplotlib is imported inside the functions, and only its object-oriented API with the Agg canvas is
used (no pyplot, no global backend switch). Figures are drawn under matplotlib's default style, whatever
the user's matplotlibrc says, and saved without the ``Software`` metadata, so the same build writes the
same bytes (given the same matplotlib and FreeType versions).

With a cache directory, a picture is named by what it shows (the plotted numbers, this module's source
and matplotlib's version): a rebuild whose composition did not change (one template edited) copies the
picture instead of drawing it, and when neither picture changed, matplotlib is not even imported.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np

from flanbuild.output.stats import MixtureStats
from flanbuild.pipeline import cachefile

COMPOSITION_PNG = "composition.png"
LENGTHS_PNG = "lengths.png"
DPI = 100


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None})
    tmp.replace(path)


def _style():
    import matplotlib.style

    return matplotlib.style.context("default")


def cluster_colors(clusters: list[str]) -> dict[str, tuple]:
    """A stable colour per cluster (tab20 in sorted cluster order)."""
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return {c: cmap((2 * i) % 20 + (i // 10) % 2) for i, c in enumerate(sorted(clusters))}


TOP_TASKS = 30  # tasks drawn one bar each; the rest share one bar (a Flan 2022 build has ~1,800 tasks)


def composition_png(path: Path, manifest: dict) -> Path:
    """Share bars first (clusters; submixtures when there are several), then the largest training
    tasks, grouped by cluster, and one bar for all the others."""
    train = {n: t for n, t in manifest["tasks"].items() if t["role"] == "train"}
    total = sum(t["rows"] for t in train.values()) or 1
    by_cluster: dict[str, int] = {}
    by_sub: dict[str, int] = {}
    for t in train.values():
        by_cluster[t["cluster"]] = by_cluster.get(t["cluster"], 0) + t["rows"]
        by_sub[t["submixture"]] = by_sub.get(t["submixture"], 0) + t["rows"]
    clusters = sorted(by_cluster, key=lambda c: (-by_cluster[c], c))
    colors = cluster_colors(list(by_cluster))
    shares = [("clusters", [(c, by_cluster[c], colors[c]) for c in clusters])]
    if len(by_sub) > 1:
        palette = cluster_colors(sorted(by_sub))
        shares.append(("submixtures", [(s, by_sub[s], palette[s]) for s in sorted(by_sub, key=lambda s: -by_sub[s])]))
    rows = _task_rows(train, clusters, colors)
    # the labels' room, from the longest label at 8 pt (about 0.085 in a character on a 9 in figure)
    left = min(0.5, 0.04 + 0.0085 * max((len(label) for label, _, _ in rows), default=10))
    ncol = max(2, int((0.95 - left) * 9.0 / 2.0))  # legend entries of about 2 in side by side
    with _style():
        legend_rows = sum(-(-len(parts) // ncol) for _, parts in shares)
        fig = _figure(9.0, 1.7 + (0.4 + 0.3) * len(shares) + 0.22 * legend_rows + 0.24 * max(len(rows), 1))
        inch = 1 / fig.get_figheight()
        fig.text(0.02, 1 - 0.25 * inch, f"Train composition: {total:,} rows, {len(train)} tasks, "
                 f"{len(by_cluster)} clusters", fontsize=11, va="center")
        top = 1 - 0.6 * inch
        for label, parts in shares:
            top = _share_bar(fig, (left, top), inch, label, parts, total, ncol)
        body_bottom = 0.55 * inch
        ax = fig.add_axes((left, body_bottom, 0.95 - left, top - 0.1 * inch - body_bottom))
        _task_bars(ax, rows, total)
        _save(fig, path)
    return Path(path)


def _task_rows(train: dict, clusters: list[str], colors: dict) -> list[tuple[str, int, tuple]]:
    """(label, rows, colour) of the TOP_TASKS largest tasks, by cluster, then one bar for the rest."""
    top = set(sorted(train, key=lambda n: (-train[n]["rows"], n))[:TOP_TASKS])
    rows = [(f"{n}  ({c})", train[n]["rows"], colors[c]) for c in clusters
            for n in sorted((n for n in top if train[n]["cluster"] == c), key=lambda n: (-train[n]["rows"], n))]
    rest = [n for n in train if n not in top]
    if rest:
        rows.append((f"{len(rest)} other tasks", sum(train[n]["rows"] for n in rest), (0.6, 0.6, 0.6, 1.0)))
    return rows


def _share_bar(fig, at: tuple[float, float], inch: float, label: str, parts: list[tuple[str, int, tuple]],
               total: int, ncol: int) -> float:
    """One 100% bar of shares with its legend below, its top left corner ``at``; returns the height left
    for what follows."""
    (left_edge, top), bar_h = at, 0.4 * inch
    ax = fig.add_axes((left_edge, top - bar_h, 0.95 - left_edge, bar_h))
    left = 0.0
    for name, n, color in parts:
        share = n / total
        ax.barh(0, share, left=left, color=color, edgecolor="white", height=1.0, label=f"{name} {share:.1%}")
        if share >= 0.12:
            ax.text(left + share / 2, 0, f"{share:.0%}", ha="center", va="center", fontsize=8)
        left += share
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.5, 0.5)
    ax.set_yticks([0], [label])
    ax.set_xticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.legend(loc="upper left", bbox_to_anchor=(0, -0.1), ncol=ncol, fontsize=8, frameon=False, handlelength=1.0,
              columnspacing=1.2)
    return top - bar_h - (0.3 + 0.22 * -(-len(parts) // ncol)) * inch


def _task_bars(ax, rows: list[tuple[str, int, tuple]], total: int) -> None:
    y = np.arange(len(rows))
    values = [r for _, r, _ in rows]
    ax.barh(y, values, color=[c for _, _, c in rows], height=0.75)
    ax.set_yticks(y, [label for label, _, _ in rows], fontsize=8)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    xmax = max(values, default=1) or 1
    ax.set_xlim(0, xmax * 1.22)
    for yi, v in zip(y, values):
        ax.text(v + xmax * 0.01, yi, f"{v:,}  {v / total:.1%}", va="center", fontsize=7)
    ax.set_xlabel("rows in train", fontsize=9)
    ax.tick_params(axis="x", labelsize=8)
    ax.spines[["top", "right"]].set_visible(False)


def _log_bins(lo: int, hi: int, n: int = 40) -> np.ndarray:
    lo, hi = max(lo, 1), max(hi, 2)
    return np.unique(np.round(np.geomspace(lo, hi + 1, n + 1)).astype(np.int64)).astype(float)


def lengths_png(path: Path, stats: MixtureStats) -> Path:
    """Histograms of input and target lengths, train and eval overlaid (share of each split's rows).

    Characters always (exact, every row); a second row in tokens when the stats have token counts.
    """
    from matplotlib.ticker import FuncFormatter

    units = ["chars"] + (["tokens"] if stats.tokens else [])
    with _style():
        fig = _figure(10.0, 3.4 * len(units) + 0.5)
        axes = fig.subplots(len(units), 2, squeeze=False)
        colors = {"train": "tab:blue", "eval": "tab:orange"}
        for r, unit in enumerate(units):
            for c, col in enumerate(("inputs", "targets")):
                ax = axes[r][c]
                dists = {s: stats.dist(s, col, unit) for s in ("train", "eval")}
                present = [d for d in dists.values() if d.n]
                if not present:
                    ax.set_axis_off()
                    continue
                bins = _log_bins(min(d.min for d in present), max(d.max for d in present))
                for split, d in dists.items():
                    if not d.n:
                        continue
                    values, counts = d.arrays()
                    hist, _ = np.histogram(np.maximum(values, 1), bins=bins, weights=counts / d.n)
                    ax.stairs(hist, bins, color=colors[split], linewidth=1.4,
                              label=f"{split} (median {d.quantile(0.5):,})")
                    ax.axvline(max(d.quantile(0.5), 1), color=colors[split], linestyle="--", linewidth=0.8)
                ax.set_xscale("log")
                ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
                what = "characters" if unit == "chars" else "tokens"
                sampled = f", {tokenizer_label(stats.tokenizer)}" if unit == "tokens" else ""
                ax.set_title(f"{col} length ({what}{sampled})", fontsize=10)
                ax.set_xlabel(f"{what} (log scale)", fontsize=9)
                ax.set_ylabel("share of the split's rows", fontsize=9)
                ax.tick_params(labelsize=8)
                ax.legend(fontsize=8, frameon=False)
                ax.spines[["top", "right"]].set_visible(False)
        fig.subplots_adjust(left=0.08, right=0.98, bottom=0.12, top=0.92, wspace=0.25, hspace=0.45)
        _save(fig, path)
    return Path(path)


def tokenizer_label(name: str | None) -> str:
    """A short name for a tokenizer given as a hub id or a path (no absolute paths in pictures)."""
    if not name:
        return ""
    p = Path(name)
    if p.exists():
        return p.parent.name if p.is_file() else p.name
    return name


def write_plots(out_dir: Path, manifest: dict, stats: MixtureStats, cache_dir: Path | None = None,
                composition: Future | None = None) -> dict[str, str]:
    """Both pictures into ``out_dir`` (copied from ``cache_dir`` when one shows the same numbers);
    returns {"composition": file name, "lengths": file name}. ``composition``: the composition picture
    is already being drawn (``start_composition``); wait for it instead of drawing it."""
    if composition is None:
        write_composition(out_dir, manifest, cache_dir)
    else:
        composition.result()
    _cached(Path(out_dir) / LENGTHS_PNG, _lengths_key(stats), cache_dir, lambda path: lengths_png(path, stats))
    return {"composition": COMPOSITION_PNG, "lengths": LENGTHS_PNG}


def write_composition(out_dir: Path, manifest: dict, cache_dir: Path | None = None) -> None:
    """The composition picture alone: it needs only the train tasks' rows, known before any split is written."""
    train = sorted((n, t["rows"], t["cluster"], t["submixture"])
                   for n, t in manifest["tasks"].items() if t["role"] == "train")  # what composition_png draws
    _cached(Path(out_dir) / COMPOSITION_PNG, _key("composition", json.dumps(train).encode()), cache_dir,
            lambda path: composition_png(path, manifest))


def start_composition(out_dir: Path, manifest: dict, cache_dir: Path | None = None) -> Future:
    """Draw the composition picture in a thread, while worker processes write the splits.

    Drawing it (and importing matplotlib, 0.3 s) would otherwise wait until the splits are written, on
    one core, while the other one idles; the main process mostly waits on its workers then. Only
    this thread touches matplotlib until the future is waited for."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flanbuild-plots")
    drawn = pool.submit(write_composition, out_dir, manifest, cache_dir)
    pool.shutdown(wait=False)  # the submitted drawing still runs; the thread ends with it
    return drawn


def _key(kind: str, *data: bytes) -> str:
    h = hashlib.sha256(f"{kind}\n".encode())
    h.update(Path(__file__).read_bytes())  # the drawing code: a change to it never reuses an old picture
    try:
        h.update(metadata.version("matplotlib").encode())
    except metadata.PackageNotFoundError:
        pass
    for d in data:
        h.update(len(d).to_bytes(8, "little") + d)
    return h.hexdigest()


def _lengths_key(stats: MixtureStats) -> str:
    """What lengths_png draws: every distribution it can plot, and the tokenizer's label."""
    data = [tokenizer_label(stats.tokenizer).encode()]
    for unit in ("chars", "tokens"):
        for split in ("train", "eval"):
            for col in ("inputs", "targets"):
                values, counts = stats.dist(split, col, unit).arrays()
                data += [values.tobytes(), counts.tobytes()]
    return _key("lengths", *data)


def _cached(path: Path, key: str, cache_dir: Path | None, draw: Callable[[Path], object]) -> None:
    """Copy the picture of ``key`` from the cache, or draw it (and keep a copy there)."""
    if cache_dir is None:
        draw(path)
        return
    kept = Path(cache_dir) / "plots" / key[:2] / f"{key}.png"
    if kept.is_file():
        shutil.copyfile(kept, path)
        cachefile.touch(kept)
        return
    draw(path)
    cachefile.write(kept, Path(path).read_bytes())
