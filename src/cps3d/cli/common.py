"""Arguments shared by several subcommands, and their resolution into library objects."""

from __future__ import annotations

import argparse
import os


class CLIError(Exception):
    """An error the user can fix; the CLI prints it without a traceback and exits with status 2."""


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

    Returns ``(dataset, raw_root, preprocessed_root)``; dataset problems become a CLIError listing them all.
    """
    from cps3d.dataset import DatasetError, RawDataset, ensure_checked

    raw = raw_root(args)
    pre = preprocessed_root(args)
    try:
        ds = RawDataset.from_root(raw, args.dataset)
        if not args.skip_check:
            ensure_checked(ds, os.path.join(pre, ds.name), args.num_processes, not args.no_progress)
    except (DatasetError, FileNotFoundError, ValueError) as e:
        raise CLIError(str(e)) from e
    return ds, raw, pre
