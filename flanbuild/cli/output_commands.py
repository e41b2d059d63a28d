"""The commands that read a finished build: ``stats``, ``show``, ``diff``, ``export``, ``push``, ``card``.

``add_parsers(subparsers, common)`` registers them; each sets ``func=handler`` with
``handler(args) -> int``. User mistakes raise ``FlanbuildError`` (``flanbuild.cli.main`` prints its
one line). Nothing heavy is imported here: rich, matplotlib, datasets and huggingface_hub load inside
the handlers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flanbuild.cli import argtypes
from flanbuild.cli.argtypes import int_at_least
from flanbuild.errors import FlanbuildError

FORMATS = ("flan", "chat", "prompt-completion", "alpaca")  # = export.FORMATS (kept here: no import cost)
LM_EVAL = "lm-eval"  # the eval split as an lm-evaluation-harness task folder (flanbuild.output.lmeval)


def _log(args):
    return (lambda msg: None) if getattr(args, "quiet", False) else (lambda msg: print(msg, file=sys.stderr, flush=True))


def _separator(value: str) -> str:
    """``--separator`` with backslash escapes (``\\n``, ``\\t``, ``\\n\\n``)."""
    try:
        return value.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except UnicodeDecodeError:
        raise argparse.ArgumentTypeError(f"bad escape in separator {value!r}") from None


_positive = int_at_least(1)
_nonneg = int_at_least(0)


# -- handlers -------------------------------------------------------------------------------------

def _offline(args) -> None:
    if getattr(args, "offline", False):
        from flanbuild.sources import offline

        offline.set_offline()


def stats_handler(args) -> int:
    _offline(args)
    from flanbuild.output.show import stats_command

    return stats_command(Path(args.out), as_json=args.json, plot=args.plot or bool(args.plot_dir),
                         plot_dir=Path(args.plot_dir) if args.plot_dir else None,
                         manifest_only=args.manifest_only, tokenizer=args.tokenizer)


def show_handler(args) -> int:
    from flanbuild.output.show import show_command

    return show_command(Path(args.out), split=args.split, task=args.task, cluster=args.cluster,
                        template=args.template, n=args.n, offset=args.offset, as_json=args.json)


def diff_handler(args) -> int:
    from flanbuild.output.diff import diff_command

    return diff_command(Path(args.a), Path(args.b), data=args.data, as_json=args.json)


def export_handler(args) -> int:
    from flanbuild.output.export import export

    if args.format == LM_EVAL:
        from flanbuild.output.lmeval import export_lmeval

        if args.jsonl:
            raise FlanbuildError("--jsonl does not apply to --format lm-eval (its data files are Parquet)")
        dest = Path(args.dest) if args.dest else Path(args.out) / "exports" / LM_EVAL
        print(export_lmeval(Path(args.out), dest, separator=args.separator, log=_log(args)).dest)
        return 0
    result = export(Path(args.out), args.format, Path(args.dest) if args.dest else None, jsonl=args.jsonl,
                    separator=args.separator, log=_log(args))
    print(result.dest)
    return 0


def push_handler(args) -> int:
    from flanbuild.output.push import push

    result = push(Path(args.out), args.repo_id, private=args.private, token=args.token, endpoint=args.endpoint,
                  revision=args.revision, commit_message=args.message, include_exports=args.include_exports,
                  dry_run=args.dry_run, log=_log(args) if not args.dry_run else
                  (lambda msg: print(msg, flush=True)))
    print(result.url)
    return 0


def card_handler(args) -> int:
    _offline(args)
    from flanbuild.builder import load_registry
    from flanbuild.output.card import write_card
    from flanbuild.output.manifest import load_manifest

    out = Path(args.out)
    manifest = load_manifest(out)
    registry = load_registry(tuple(Path(c) for c in args.catalog) or
                             tuple(Path(c) for c in manifest.get("config", {}).get("catalogs", []) if Path(c).is_dir()))
    info = write_card(out, manifest, registry.tasks, args.tokenizer, plots=not args.no_plots)
    _log(args)(f"wrote {out / 'README.md'} ({', '.join(info['images']) or 'no pictures'}) in {info['seconds']:.1f}s")
    return 0


# -- parsers --------------------------------------------------------------------------------------

def add_parsers(subparsers, common: argparse.ArgumentParser) -> None:
    """Register ``stats``, ``show``, ``diff``, ``export``, ``push`` and ``card``; ``common`` = shared options."""

    p = subparsers.add_parser("stats", parents=[common], help="composition and lengths of a built mixture",
                              description="Clusters, tasks (rows, shares, template types) and length statistics of "
                              "a build, as tables; --plot also writes the card's pictures.")
    p.add_argument("out", metavar="OUT", help="a build directory (flanbuild build --out OUT)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--plot", action="store_true", help="also write composition.png and lengths.png (into OUT)")
    p.add_argument("--plot-dir", metavar="DIR", help="write the pictures here instead of OUT (implies --plot)")
    p.add_argument("--tokenizer", metavar="NAME_OR_PATH", help="also count tokens (on a sample) with this tokenizer")
    p.add_argument("--offline", action="store_true", help="never contact the Hugging Face Hub (tokenizer from a path or the cache)")
    p.add_argument("--manifest-only", action="store_true",
                   help="only what mixture.json says (no pass over the data: no template types or lengths)")
    p.set_defaults(func=stats_handler)

    p = subparsers.add_parser("show", parents=[common], help="print rendered rows of a built mixture",
                              description="Print rows of a split as stored, optionally only one task, cluster or "
                              "template; streams the data and stops after N rows.")
    p.add_argument("out", metavar="OUT", help="a build directory")
    p.add_argument("--task", metavar="T", help="only rows of this task")
    p.add_argument("--cluster", metavar="C", help="only rows of this cluster")
    p.add_argument("--template", type=argtypes.template_id, metavar="ID", help="only rows rendered by this template id")
    p.add_argument("-n", type=_positive, default=3, help="number of rows (default 3)")
    p.add_argument("--offset", type=_nonneg, default=0, metavar="K", help="skip the first K matching rows")
    p.add_argument("--split", choices=["train", "eval"], default="train")
    p.add_argument("--json", action="store_true", help="one JSON object per row")
    p.set_defaults(func=show_handler)

    p = subparsers.add_parser("diff", parents=[common], help="what changed between two builds",
                              description="Compare two builds from their mixture.json: fingerprints, config, counts, "
                              "tasks, templates, skips, versions; --data also compares the rows per task. Exit "
                              "status 0 when the data is identical, 1 when it differs.")
    p.add_argument("a", metavar="OUT_A")
    p.add_argument("b", metavar="OUT_B")
    p.add_argument("--data", action="store_true", help="also compare rows per task (reads both builds)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=diff_handler)

    p = subparsers.add_parser("export", parents=[common], help="write a build in a trainer's format",
                              description="Export a build as flan (its own columns), chat (a messages column for "
                              "TRL SFTTrainer / axolotl chat_template), prompt-completion (TRL) or alpaca "
                              "(axolotl / LLaMA-Factory), as Parquet or JSONL. DIR loads with "
                              "datasets.load_dataset(DIR) and has a LLaMA-Factory dataset_info.json.")
    p.add_argument("out", metavar="OUT", help="a build directory")
    p.add_argument("--format", choices=(*FORMATS, LM_EVAL), default="flan",
                   help="default: flan; lm-eval: the eval split as lm-evaluation-harness tasks")
    p.add_argument("--out", dest="dest", metavar="DIR", help="export directory (default: OUT/exports/FORMAT)")
    p.add_argument("--jsonl", action="store_true", help="JSON lines instead of Parquet")
    p.add_argument("--separator", type=_separator, default="\n", metavar="S",
                   help="prompt-completion: appended to the prompt (backslash escapes; default '\\n')")
    p.set_defaults(func=export_handler)

    p = subparsers.add_parser("push", parents=[common], help="upload a build to the Hugging Face Hub",
                              description="Upload a build (card, pictures, mixture.json, data/) to a dataset "
                              "repository in one commit, creating it if needed; stale data/ files there are "
                              "deleted. The token comes from --token, HF_TOKEN or `hf auth login`.")
    p.add_argument("out", metavar="OUT", help="a build directory")
    p.add_argument("repo_id", metavar="REPO_ID", help="e.g. your-name/flan-mixture")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--token", help="Hugging Face token (default: HF_TOKEN or the stored login)")
    p.add_argument("--endpoint", metavar="URL", help="Hub endpoint (default: $HF_ENDPOINT or https://huggingface.co)")
    p.add_argument("--revision", help="branch to commit to (default: main)")
    p.add_argument("--message", metavar="TEXT", help="commit message")
    p.add_argument("--include-exports", action="store_true", help="also upload OUT/exports/")
    p.add_argument("--dry-run", action="store_true", help="list what would be uploaded; contact nothing")
    p.set_defaults(func=push_handler)

    p = subparsers.add_parser("card", parents=[common], help="(re)write the dataset card and its pictures",
                              description="Write OUT/README.md and its pictures from mixture.json and the data "
                              "(what a build does at its end).")
    p.add_argument("out", metavar="OUT", help="a build directory")
    p.add_argument("--tokenizer", metavar="NAME_OR_PATH", help="add token counts with this tokenizer")
    p.add_argument("--offline", action="store_true", help="never contact the Hugging Face Hub (tokenizer from a path or the cache)")
    p.add_argument("--no-plots", action="store_true", help="no pictures (and no matplotlib)")
    p.set_defaults(func=card_handler)
