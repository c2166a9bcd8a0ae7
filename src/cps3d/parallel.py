"""Running one function over many cases in worker processes, with a progress bar."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Iterator, Sized
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def imap_cases(fn: Callable[..., T], arguments: Iterable[tuple], num_processes: int = 1, desc: str = "",
               progress: bool = True, max_pending: int | None = None) -> Iterator[tuple[int, T | BaseException]]:
    """Call ``fn(*a)`` for the i-th ``a`` of ``arguments`` and yield ``(i, result)`` as results arrive (any order).

    A call that raises yields ``(i, exception)`` instead of stopping the others, so the caller can name the case
    that failed. With ``num_processes <= 1`` everything runs in this process (no spawn cost, easy debugging).
    Workers are started with 'spawn', as nnU-Net does, so that torch's threads are never forked.
    ``max_pending`` bounds how many calls are queued at once (memory: each may take or return a large array).
    ``arguments`` may be a generator: the next one is only drawn when fewer than ``max_pending`` calls are queued,
    so producing an argument (for example running a network) overlaps with the calls already running.
    """
    total = len(arguments) if isinstance(arguments, Sized) else None
    bar = tqdm(total=total, desc=desc, disable=not progress or total == 0, leave=False, dynamic_ncols=True)
    try:
        if num_processes <= 1 or (total is not None and total <= 1):
            for i, a in enumerate(arguments):
                try:
                    result: Any = fn(*a)
                except Exception as e:  # reported to the caller with the case index
                    result = e
                bar.update()
                yield i, result
            return
        limit = max_pending or 2 * num_processes
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=num_processes, mp_context=ctx) as pool:
            pending: dict[Future, int] = {}
            todo = enumerate(arguments)
            exhausted = False
            while pending or not exhausted:
                while not exhausted and len(pending) < limit:
                    drawn = next(todo, None)
                    if drawn is None:
                        exhausted = True
                        break
                    pending[pool.submit(fn, *drawn[1])] = drawn[0]
                    del drawn  # the pool holds the arguments until the call is done; no second reference here
                if not pending:
                    break
                done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                for f in done:
                    i = pending.pop(f)
                    exc = f.exception()
                    bar.update()
                    yield i, (exc if exc is not None else f.result())
    finally:
        bar.close()
