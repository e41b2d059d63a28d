"""``flanbuild cache info|prune|clear``: the cache directory by kind, and removing from it (flanbuild/cachedir.py)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from flanbuild import cachedir
from flanbuild.cli import argtypes
from flanbuild.errors import FlanbuildError


def add_parsers(subparsers, common: argparse.ArgumentParser) -> None:
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--cache-dir", metavar="DIR",
                       help="the cache (default: $FLANBUILD_CACHE, else $XDG_CACHE_HOME/flanbuild or ~/.cache/flanbuild)")
    kinds = argparse.ArgumentParser(add_help=False)
    kinds.add_argument("--kind", action="append", choices=list(cachedir.KINDS), default=[],
                       help="only entries of this kind (repeatable)")
    kinds.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")

    p = subparsers.add_parser("cache", parents=[common], help="show, prune or clear the build cache",
                              description="What the cache holds, by kind, and removing from it. Every entry is "
                              "verified when used and computed again when missing, so removing any costs only time.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=type(p))
    a = actions.add_parser("info", parents=[common, where], help="size and last use per kind",
                           description="The cache's entries, size and last use per kind, and what is not flanbuild's.")
    a.add_argument("--json", action="store_true", help="machine-readable output")
    a.set_defaults(func=info_handler)
    a = actions.add_parser("prune", parents=[common, where, kinds], help="remove the least recently used entries",
                           description="Remove entries unused for --older-than, then the least recently used ones "
                           "until the cache holds at most --max-size (give one or both), and files of killed writes.")
    a.add_argument("--max-size", type=argtypes.size, metavar="SIZE", help="e.g. 500M, 20G, 1.5GiB")
    a.add_argument("--older-than", type=argtypes.age, metavar="AGE", help="e.g. 12h, 30d, 2w")
    a.set_defaults(func=prune_handler)
    a = actions.add_parser("clear", parents=[common, where, kinds], help="remove every entry",
                           description="Remove every flanbuild entry (of --kind), leaving anything else alone.")
    a.set_defaults(func=clear_handler)


def _root(args) -> Path:
    from flanbuild.sources.urls import default_cache_dir

    return Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir().expanduser()


def info_handler(args) -> int:
    inventory = cachedir.scan(_root(args))
    rows = {kind: (len(es), sum(e.size for e in es), min((e.used for e in es), default=None),
                   max((e.used for e in es), default=None)) for kind, es in inventory.by_kind().items()}
    if args.json:
        print(json.dumps({"cache_dir": str(inventory.root),
                          "kinds": {k: {"entries": n, "bytes": b, "oldest_use": lo, "newest_use": hi}
                                    for k, (n, b, lo, hi) in rows.items()},
                          "total_bytes": sum(e.size for e in inventory.entries),
                          "leftovers": [str(p) for e in inventory.leftovers for p in e.paths],
                          "not_flanbuilds": [str(p) for p in inventory.others]}, indent=2))
        return 0
    print(f"cache: {inventory.root}{'' if inventory.root.is_dir() else ' (does not exist yet)'}")
    print(f"{'kind':<10}{'entries':>9}{'size':>11}   last used (oldest .. newest)")
    for kind, (n, size, lo, hi) in rows.items():
        print(f"{kind:<10}{n:>9,}{_size(size):>11}   {_when(lo)} .. {_when(hi)}" if n else f"{kind:<10}{0:>9}{'-':>11}")
    print(f"{'total':<10}{len(inventory.entries):>9,}{_size(sum(e.size for e in inventory.entries)):>11}")
    if inventory.leftovers:
        print(f"{len(inventory.leftovers)} file(s) of killed writes ({_size(sum(e.size for e in inventory.leftovers))}): "
              "flanbuild cache prune removes them")
    if inventory.others:
        names = [str(p.relative_to(inventory.root)) for p in inventory.others]
        more = f" and {len(names) - 5} more" if len(names) > 5 else ""
        print(f"not flanbuild's (never removed): {', '.join(names[:5])}{more}")
    return 0


def prune_handler(args) -> int:
    if args.max_size is None and args.older_than is None:
        raise FlanbuildError("cache prune: give --max-size SIZE, --older-than AGE or both "
                             "(flanbuild cache clear removes everything)")
    inventory = cachedir.scan(_root(args))
    chosen = cachedir.to_prune(inventory, max_size=args.max_size, older_than=args.older_than, kinds=tuple(args.kind))
    return _remove(args, inventory, chosen)


def clear_handler(args) -> int:
    inventory = cachedir.scan(_root(args))
    return _remove(args, inventory, cachedir.to_clear(inventory, tuple(args.kind)))


def _remove(args, inventory: cachedir.Inventory, chosen: list[cachedir.Entry]) -> int:
    size = sum(e.size for e in chosen)
    if args.dry_run:
        for entry in chosen:
            print(f"would remove {entry.kind:<9} {_size(entry.size):>10}  {_when(entry.used)}  {entry.paths[0]}")
        print(f"would remove {len(chosen):,} entries, {_size(size)}, of {inventory.root}")
        return 0
    freed = cachedir.remove(inventory, chosen)
    if not args.quiet:
        left = sum(e.size for e in cachedir.scan(inventory.root).entries)
        print(f"removed {len(chosen):,} entries, {_size(freed)}; {_size(left)} left in {inventory.root}", file=sys.stderr)
    return 0


def _size(n: int) -> str:
    for unit, factor in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= factor:
            return f"{n / factor:.1f} {unit}"
    return f"{n} B"


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "-"
