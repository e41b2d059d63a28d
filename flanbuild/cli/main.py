"""The ``flanbuild`` command line: one parser, one error policy, one set of exit codes.

Every sub-command is registered here from the module that implements it (``data_commands``,
``output_commands``, ``flanbuild.finetune.cli``) and shares the same common options. ``main`` is the
only place that turns exceptions into exit codes:

* a user mistake (``FlanbuildError`` and its subclasses) prints one line, ``flanbuild: error: ...``,
  and exits with the error's ``exit_code`` (2 unless the error says otherwise);
* an ``OSError`` (disk full, permissions) is the user's environment: one line, exit 2;
* Ctrl-C exits 130; anything else is a bug in flanbuild and keeps its traceback.
``--debug`` adds the traceback to the one line.
"""

from __future__ import annotations

import argparse
import sys
import traceback

from flanbuild.errors import FlanbuildError, one_line


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (what is wrong, and where to look), like other errors."""

    def error(self, message: str):
        self.exit(2, f"flanbuild: error: {self.prog}: {message} (see {self.prog} --help)\n")


def _common_options() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The options every command takes, and the data options of commands that read source data."""
    common = _Parser(add_help=False)
    common.add_argument("--catalog", action="append", default=[], metavar="DIR",
                        help="extra catalog directory with tasks/ and templates/ (repeatable; later ones override)")
    common.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    common.add_argument("-v", "--verbose", action="store_true", help="more detail (full skip reasons)")
    data = _Parser(add_help=False)
    data.add_argument("--data-dir", action="append", default=[], metavar="DIR",
                      help="local mirror laid out as <hub id>/<config>/<split>.parquet (repeatable; "
                           "default: $FLANBUILD_DATA_DIR)")
    data.add_argument("--offline", action="store_true", help="never contact the Hugging Face Hub (HF_HUB_OFFLINE=1)")
    return common, data


def _add_missing(parser: argparse.ArgumentParser, parent: argparse.ArgumentParser) -> None:
    """Give a sub-command registered elsewhere the common options it does not define itself."""
    have = {opt for action in parser._actions for opt in action.option_strings}
    for action in parent._actions:
        if action.option_strings and not have & set(action.option_strings):
            parser._add_action(action)


def make_parser() -> argparse.ArgumentParser:
    from flanbuild.cli import cache_commands, data_commands, output_commands

    common, data = _common_options()
    parser = _Parser(prog="flanbuild", description="Build FLAN-style instruction-tuning mixtures.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    data_commands.add_parsers(sub, common, data)
    output_commands.add_parsers(sub, common)
    cache_commands.add_parsers(sub, common)
    try:
        from flanbuild.finetune.cli import add_parsers
    except ImportError:  # pragma: no cover - the finetune package is part of flanbuild; defensive only
        pass
    else:
        add_parsers(sub)
    for command in sub.choices.values():
        _add_missing(command, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = make_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    if args.version:
        from importlib.metadata import version

        print(f"flanbuild {version('flanbuild')}")
        return 0
    if not args.command:
        parser.print_usage(sys.stderr)
        print("flanbuild: error: no command given (see flanbuild --help)", file=sys.stderr)
        return 2
    return run(args.func, args)


def run(handler, args) -> int:
    """Call a command handler under the error policy above."""
    try:
        return handler(args)
    except FlanbuildError as e:
        _report(args, f"flanbuild: error: {one_line(str(e))}")
        return e.exit_code
    except OSError as e:  # disk full, permissions at write time: the user's environment, not a bug
        _report(args, f"flanbuild: error: {one_line(f'{e.strerror or e}: {e.filename or chr(0)}'.rstrip(': ' + chr(0)))}")
        return 2
    except KeyboardInterrupt:
        print("flanbuild: interrupted", file=sys.stderr)
        return 130


def _report(args, line: str) -> None:
    if getattr(args, "debug", False):
        traceback.print_exc()
    print(line, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
