"""When a build may replace an existing OUT directory.

A build replaces OUT atomically, which deletes whatever OUT held. So OUT is replaced only when it is
a flanbuild output whose ``mixture.json`` verifies (every data file present with its recorded hash),
and only when it holds nothing but what a build writes there (the manifest's data files, the card, its
pictures, exports). A file a build did not write (``results.json``, ``precious.txt``) makes the build
refuse, naming it: the build never deletes what it did not write, and never silently. A directory that
merely contains some ``mixture.json`` that does not verify is refused too.
"""

from __future__ import annotations

from pathlib import Path

from flanbuild.errors import FlanbuildError

#: What a build writes into OUT besides the data files its manifest lists.
BUILD_PRODUCTS = frozenset({"mixture.json", "README.md", "composition.png", "lengths.png"})
BUILD_PRODUCT_DIRS = ("exports/",)


def _relative_files(out: Path) -> list[str]:
    found = []
    for path in sorted(out.rglob("*")):
        if path.is_dir() and not path.is_symlink():
            continue
        found.append(path.relative_to(out).as_posix())
    return found


def check_replaceable(out: Path) -> None:
    """Refuse (one line, before any work) to replace an OUT that is not a verified flanbuild output or
    that holds files a build did not write."""
    out = Path(out)
    if not out.is_dir() or not any(out.iterdir()):
        return
    from flanbuild.output.manifest import FILENAME, load_manifest, verify

    try:
        problems = verify(out)
        manifest = load_manifest(out)
    except FlanbuildError as e:
        raise FlanbuildError(f"output directory {out} is not a flanbuild output whose {FILENAME} verifies ({e}); "
                             f"refusing to replace it") from None
    if problems:
        more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
        raise FlanbuildError(f"output directory {out} does not match its {FILENAME} ({problems[0]}{more}); refusing to "
                             f"replace it (move it away, or see flanbuild verify)")
    listed = {f["path"] for f in manifest["files"]}
    foreign = [rel for rel in _relative_files(out)
               if rel not in listed and rel not in BUILD_PRODUCTS and not rel.startswith(BUILD_PRODUCT_DIRS)]
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise FlanbuildError(f"output directory {out} holds file(s) a build did not write: {shown}; the build refuses "
                             f"rather than delete them (move them out of {out} and build again)")


