"""The ``cps3d`` command: one entry point, one subcommand per pipeline stage.

Each subcommand is a module of this package with ``COMMAND``, ``add_parser(subparsers)`` and ``run(args) -> int``,
listed in :data:`COMMANDS` in the pipeline order that ``cps3d --help`` shows. Modules import their heavy
dependencies (torch, nnU-Net) inside ``run`` so that ``cps3d --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Protocol

from cps3d import __version__
from cps3d.cli import check, compare, demo, evaluate, export, phantoms, plan, predict, preprocess, profile, train
from cps3d.cli.common import ArgumentParser, CLIError


class Command(Protocol):
    """What a subcommand module defines (the type checker checks every module in :data:`COMMANDS`)."""

    COMMAND: str

    def add_parser(self, sub) -> argparse.ArgumentParser: ...

    def run(self, args: argparse.Namespace) -> int: ...


# the library raises these for input a user can fix (a missing or existing file, a bad value); main() reports them
# without a traceback. A command that means another status (1: the input was checked and failed) raises CLIError.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError)

COMMANDS: tuple[Command, ...] = (demo, phantoms, check, plan, preprocess, train, predict, export, evaluate,
                                 compare, profile)


def build_parser() -> ArgumentParser:
    # common.ArgumentParser for the subcommands too (add_subparsers uses the parent's class): no abbreviations, and
    # suggestions for mistyped commands, choices and options
    parser = ArgumentParser(
        prog="cps3d",
        description="Semi-supervised 3D segmentation with Cross Pseudo Supervision (3D-CPS) on nnU-Net v2. "
        "Typical order: check -> plan -> preprocess -> train -> predict -> evaluate. "
        "'cps3d demo' runs all of it on synthetic phantoms.",
    )
    parser.add_argument("--version", action="version", version=f"cps3d {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        p = module.add_parser(sub)
        p.set_defaults(_run=module.run, _parser=p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:  # reported by the subcommand's parser, with its usage, not by the top-level one
        command_parser = getattr(args, "_parser", None)
        if command_parser is None:
            parser.error_unrecognized(extras)
        command_parser.error_unrecognized(extras, parent=parser)
    args._argv = list(argv) if argv is not None else None  # for commands that re-launch themselves (train --num-gpus)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s" if args.verbose else "%(message)s",
        stream=sys.stderr,
        force=True,
    )
    try:
        return int(args._run(args) or 0)
    except CLIError as e:
        print(f"cps3d {args.command}: error: {e}", file=sys.stderr)
        return e.status
    except USER_ERRORS as e:  # the library's errors name the file or option and the problem: usage errors
        print(f"cps3d {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cps3d {args.command}: interrupted", file=sys.stderr)
        return 130
