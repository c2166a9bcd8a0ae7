"""Arguments shared by several subcommands, and their resolution into library objects."""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Sequence
from typing import Any, NoReturn

from cps3d.options import closest


class CLIError(Exception):
    """An error the user can fix; the CLI prints it without a traceback and exits with ``status``: 2 (the default)
    for a usage error (options, missing folders), 1 when the input was checked and some of it failed."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


class ArgumentParser(argparse.ArgumentParser):
    """The parser of ``cps3d`` and of every subcommand: no abbreviated options (argparse would read ``--minute 3``
    as ``--minutes 3`` without a word), and a suggestion for a mistyped command, choice or option."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def _check_value(self, action: argparse.Action, value) -> None:
        # argparse checks every value with choices here, subcommand names included
        try:
            super()._check_value(action, value)
        except argparse.ArgumentError as e:
            hint = closest(value, action.choices or ())
            if hint is None:
                raise
            raise argparse.ArgumentError(action, f"{e.message} (did you mean {hint!r}?)") from None

    def error_unrecognized(self, extras: Sequence[str], parent: argparse.ArgumentParser | None = None) -> NoReturn:
        """Exit with this parser's usage, naming the arguments it does not know and the options they resemble
        (this parser's, and ``parent``'s: the top-level options of a mistyped ``cps3d --verbse check``)."""
        options = [o for p in (self, parent) if p is not None for a in p._actions for o in a.option_strings]
        hints = {}
        for arg in extras:
            name = arg.split("=", 1)[0]
            hint = closest(name, options) if name.startswith("-") else None
            if hint is not None:
                hints[name] = hint
        if len(hints) == 1:
            hint = f" (did you mean {next(iter(hints.values()))}?)"
        else:
            hint = f" (did you mean {', '.join(f'{h} for {n}' for n, h in hints.items())}?)" if hints else ""
        self.error("unrecognized arguments: " + " ".join(extras) + hint)


def default_of(config_class: type, name: str) -> Any:
    """The default of field ``name`` of the dataclass ``config_class``: options default to None ("not given") and
    the dataclass supplies the value, so that it is written in one place; help texts show it with this."""
    for f in dataclasses.fields(config_class):
        if f.name == name:
            if f.default is dataclasses.MISSING:
                raise ValueError(f"{config_class.__name__}.{name} has no default")
            return f.default
    raise ValueError(f"{config_class.__name__} has no field {name!r}")


def add_plans_name(parser: argparse.ArgumentParser) -> None:
    from cps3d.planning import DEFAULT_PLANS_NAME

    parser.add_argument("--plans-name", default=DEFAULT_PLANS_NAME,
                        help=f"plans identifier (default: {DEFAULT_PLANS_NAME})")


def add_roots(parser: argparse.ArgumentParser, raw: bool = True, preprocessed: bool = True,
              results: bool = False) -> None:
    """Add ``--raw-root``, ``--preprocessed-root`` and ``--results-root`` (defaults: nnU-Net's variables)."""
    if raw:
        parser.add_argument("--raw-root", metavar="DIR",
                            help="folder holding DatasetNNN_Name raw datasets (default: $nnUNet_raw)")
    if preprocessed:
        parser.add_argument("--preprocessed-root", metavar="DIR",
                            help="folder for fingerprints, plans and preprocessed data (default: $nnUNet_preprocessed)")
    if results:
        parser.add_argument("--results-root", metavar="DIR",
                            help="folder for trained models (default: $nnUNet_results)")


def add_dataset(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-d", "--dataset", required=True, metavar="D",
                        help="dataset id (7) or name (Dataset007_Abdomen)")


def add_num_processes(parser: argparse.ArgumentParser, default: int = 2, what: str = "worker processes") -> None:
    parser.add_argument("-np", "--num-processes", type=int, default=default, metavar="N",
                        help=f"number of {what} (default: {default})")


def add_skip_check(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--skip-check", action="store_true",
                        help="do not run the dataset integrity checks of 'cps3d check' first (files are still read "
                        "in full and refused when empty, truncated or holding NaN/inf)")


def add_no_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def resolve_root(value: str | None, flag: str, env: str, must_exist: bool = True) -> str:
    """Return the root folder given by ``flag`` or, failing that, by the environment variable ``env``."""
    root = value if value else os.environ.get(env)
    if not root:
        raise CLIError(f"no folder given: pass {flag} DIR or set the environment variable {env}")
    root = os.path.abspath(os.path.expanduser(root))
    if must_exist and not os.path.isdir(root):
        source = flag if value else f"${env}"
        raise CLIError(f"{source} points to {root}, which is not an existing folder")
    return root


def optional_root(value: str | None, flag: str, env: str) -> str | None:
    """:func:`resolve_root` for a folder a command can do without: None when neither ``flag`` nor ``env`` gives one."""
    if not value and not os.environ.get(env):
        return None
    return resolve_root(value, flag, env, must_exist=False)


def raw_root(args: argparse.Namespace) -> str:
    return resolve_root(getattr(args, "raw_root", None), "--raw-root", "nnUNet_raw")


def preprocessed_root(args: argparse.Namespace, must_exist: bool = False) -> str:
    return resolve_root(getattr(args, "preprocessed_root", None), "--preprocessed-root", "nnUNet_preprocessed",
                        must_exist=must_exist)


def results_root(args: argparse.Namespace, must_exist: bool = False) -> str:
    return resolve_root(getattr(args, "results_root", None), "--results-root", "nnUNet_results",
                        must_exist=must_exist)


def checked_dataset(args: argparse.Namespace):
    """The raw dataset named by ``-d`` and the preprocessed root, after the integrity checks of ``cps3d check``
    (skipped with ``--skip-check``; cached: an unchanged dataset that passed before is not read again).

    Returns ``(dataset, raw_root, preprocessed_root)``; dataset problems become a CLIError listing them all (exit
    status 1, as from ``cps3d check``).
    """
    from cps3d.dataset import DatasetError, RawDataset, ensure_checked

    raw = raw_root(args)
    pre = preprocessed_root(args)
    try:
        ds = RawDataset.from_root(raw, args.dataset)
        if not args.skip_check:
            ensure_checked(ds, os.path.join(pre, ds.name), args.num_processes, not args.no_progress)
    except DatasetError as e:
        raise CLIError(str(e), status=1) from e
    return ds, raw, pre
