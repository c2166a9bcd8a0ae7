"""Running one function over many cases in worker processes, with a progress bar."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def imap_cases(fn: Callable[..., T], arguments: Sequence[tuple], num_processes: int = 1, desc: str = "",
               progress: bool = True, max_pending: int | None = None) -> Iterator[tuple[int, T | BaseException]]:
    """Call ``fn(*arguments[i])`` for every i and yield ``(i, result)`` as results arrive (any order).

    A call that raises yields ``(i, exception)`` instead of stopping the others, so the caller can name the case
    that failed. With ``num_processes <= 1`` everything runs in this process (no spawn cost, easy debugging).
    Workers are started with 'spawn', as nnU-Net does, so that torch's threads are never forked.
    ``max_pending`` bounds how many calls are queued at once (memory: each may return a large array).
    """
    total = len(arguments)
    bar = tqdm(total=total, desc=desc, disable=not progress or total == 0, leave=False, dynamic_ncols=True)
    try:
        if num_processes <= 1 or total <= 1:
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
            todo: Iterable[int] = iter(range(total))
            exhausted = False
            while pending or not exhausted:
                while not exhausted and len(pending) < limit:
                    i = next(todo, None)  # type: ignore[call-overload]
                    if i is None:
                        exhausted = True
                        break
                    pending[pool.submit(fn, *arguments[i])] = i
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
