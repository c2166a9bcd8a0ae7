"""The one place where cps3d works around how nnU-Net v2 finds its folders.

nnU-Net's planner, preprocessor and trainer read the three folders from the environment variables ``nnUNet_raw``,
``nnUNet_preprocessed`` and ``nnUNet_results`` at call time (``nnunetv2.paths``). cps3d takes the folders as explicit
arguments (``--raw-root`` etc.), so while nnU-Net code runs we expose them through those variables and restore the
previous values afterwards.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

_VARIABLES = {"raw": "nnUNet_raw", "preprocessed": "nnUNet_preprocessed", "results": "nnUNet_results"}


@contextlib.contextmanager
def nnunet_folders(raw: str | os.PathLike | None = None, preprocessed: str | os.PathLike | None = None,
                   results: str | os.PathLike | None = None) -> Iterator[None]:
    """Set nnU-Net's folder variables to the given folders (those given as None are left as they are)."""
    given = {"raw": raw, "preprocessed": preprocessed, "results": results}
    saved = {var: os.environ.get(var) for var in _VARIABLES.values()}
    try:
        for key, value in given.items():
            if value is not None:
                os.environ[_VARIABLES[key]] = os.fspath(value)
        yield
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


@contextlib.contextmanager
def planner_thread_count() -> Iterator[None]:
    """nnU-Net's planner sets torch's thread count to ``nnUNet_n_proc_DA`` while it estimates memory, which fails
    when that variable is 0 (a valid setting for training: augmentation in the main process). Planning does no data
    augmentation, so we raise it to at least 1 for the duration."""
    var = "nnUNet_n_proc_DA"
    saved = os.environ.get(var)
    try:
        if saved is not None and saved.strip().isdigit() and int(saved) < 1:
            os.environ[var] = "1"
        yield
    finally:
        if saved is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = saved
