"""Efficiency profiler: FLARE 2022's running measures, sampled while a command or a block of code runs.

A background thread takes a :class:`~cps3d.evaluation.profile_report.Sample` every ``interval`` seconds (default
0.1), reading the meters of :mod:`cps3d.evaluation.meters`:

- wall time since the start (s);
- CPU utilisation of the whole machine in % of all cores (100 - idle, iowait counted as idle), averaged over the
  interval ending at the sample; and the same for the profiled process tree (its processes' user + system time);
- RAM in use on the machine (total - available, MB) and the resident memory of the profiled process tree (MB);
- GPU memory in use (MB), summed over the measured GPUs (NVML from ``nvidia-ml-py``; ``torch.cuda.mem_get_info``
  when NVML is unavailable). It is the device's memory in use, as ``nvidia-smi`` shows it, so other programs on the
  same GPU count too. Without a GPU the GPU fields are None and reports say "no GPU", never 0.

What is reported and written: :mod:`cps3d.evaluation.profile_report`.

In-process use (what ``cps3d predict --profile`` does)::

    with ResourceProfiler(interval=0.1) as prof:
        for case in cases:
            with prof.case(case.id):        # a sample is taken at entry and exit
                predict(case)
    prof.write(out_dir, gpu_allowance_mb=FLARE_GPU_ALLOWANCE_MB)  # profile.json, samples.csv, cases.csv, profile.png

Whole commands: :func:`profile_command` (``cps3d profile -- COMMAND ...``) profiles a child process and its
descendants and returns the child's exit code.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from cps3d.evaluation.meters import NO_GPU, GpuMeter, ProcessTree, machine_cpu, machine_ram_used_mb
from cps3d.evaluation.profile_report import ProfileReport, ResourceSummary, Sample, window_summary, write_profile

log = logging.getLogger(__name__)

__all__ = ["Sample", "ResourceSummary", "ProfileReport", "ResourceProfiler", "profile_command", "NO_GPU",
           "FLARE_GPU_ALLOWANCE_MB"]

FLARE_GPU_ALLOWANCE_MB = 2048.0  # GPU memory FLARE 2022 did not count in its GPU memory-time area


class ResourceProfiler:
    """Background sampler of CPU, RAM and GPU memory, with optional per-case marks.

    ``interval``: seconds between samples (> 0). ``pid``: root of the process tree whose CPU time and RSS are
    recorded (default: this process; :meth:`track` changes it, e.g. to a child started after :meth:`start`).
    ``gpu_indices``: GPUs to measure (default: those in CUDA_VISIBLE_DEVICES, else all). ``gpu=False`` skips GPU
    measurement. Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(self, interval: float = 0.1, pid: int | None = None, gpu_indices: Sequence[int] | None = None,
                 gpu: bool = True):
        if not (isinstance(interval, (int, float)) and math.isfinite(interval) and interval > 0):
            raise ValueError(f"interval must be a positive number of seconds, got {interval!r}")
        self.interval = float(interval)
        self._pid = os.getpid() if pid is None else int(pid)
        self._gpu_indices = None if gpu_indices is None else tuple(gpu_indices)
        self._gpu_enabled = gpu
        self._samples: list[Sample] = []
        self._cases: list[tuple[str, float, float]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0
        self._last_machine: tuple[float, float] | None = None
        self._last_tree: tuple[float, float] | None = None  # (wall, cpu seconds)
        self._cores: int | None = None
        self._running = False
        self._gpu: GpuMeter | None = None
        self._tree = ProcessTree()

    # -- lifecycle ------------------------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Open the GPU meter (NVML) now rather than at :meth:`start`: opening can take a moment."""
        if self._gpu is not None:
            return
        self._gpu = GpuMeter(self._gpu_indices, self._gpu_enabled)

    def start(self) -> ResourceProfiler:
        """Open the meters if needed, take the first sample and start the sampling thread."""
        if self._running:
            raise RuntimeError("the profiler is already running")
        self.prepare()
        self._samples.clear()
        self._cases.clear()
        self._t0 = time.perf_counter()
        self._running = True
        self.sample()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="cps3d-profiler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and take a last sample. Safe to call twice."""
        if not self._running:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()
        self._running = False

    def __enter__(self) -> ResourceProfiler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def track(self, pid: int) -> None:
        """Record CPU time and RSS of the tree rooted at ``pid`` from now on."""
        with self._lock:
            self._pid = int(pid)
            self._last_tree = None

    def _loop(self) -> None:
        k = 1
        while True:
            delay = self._t0 + k * self.interval - time.perf_counter()
            if delay > 0 and self._stop.wait(delay):
                return
            if self._stop.is_set():
                return
            try:
                self.sample()
            except Exception:  # never let a failed read kill the thread silently mid-run
                log.exception("profiler sample failed")
            # after a stall (suspended process, overloaded machine) skip missed ticks instead of bursting
            k = max(k + 1, int((time.perf_counter() - self._t0) / self.interval) + 1)

    # -- measuring ------------------------------------------------------------------------------------------------

    def sample(self) -> Sample:
        """Take one sample now (thread-safe) and return it."""
        with self._lock:
            now = time.perf_counter()
            cpu = proc_cpu = None
            busy, total, cores = machine_cpu()
            self._cores = cores
            machine = (busy, total)
            ram = machine_ram_used_mb()
            tree = self._tree.read(self._pid)
            if self._last_machine is not None:
                d_total = machine[1] - self._last_machine[1]
                if d_total > 0:
                    cpu = 100.0 * (machine[0] - self._last_machine[0]) / d_total
            if self._last_tree is not None:
                dt = now - self._last_tree[0]
                if dt > 0:
                    proc_cpu = 100.0 * (tree[0] - self._last_tree[1]) / dt / cores
            self._last_tree = (now, tree[0])
            self._last_machine = machine
            gpu = self._gpu.read() if self._gpu is not None else None
            s = Sample(now - self._t0, cpu, proc_cpu, ram, tree[1], gpu)
            self._samples.append(s)
            return s

    @contextlib.contextmanager
    def case(self, name: str) -> Iterator[None]:
        """Mark the enclosed block as case ``name``: samples are taken at entry and exit, and the report gives the
        case's own running time, areas and peaks."""
        if not self._running:
            raise RuntimeError("start the profiler before marking a case")
        start = self.sample().t_s
        try:
            yield
        finally:
            end = self.sample().t_s
            with self._lock:
                self._cases.append((str(name), start, end))

    @property
    def samples(self) -> list[Sample]:
        """A copy of the samples so far."""
        with self._lock:
            return list(self._samples)

    @property
    def has_gpu(self) -> bool:
        return self._gpu is not None and self._gpu.available

    def report(self, gpu_allowance_mb: float = 0.0) -> ProfileReport:
        """Totals over the whole run and per case; ``gpu_allowance_mb`` is subtracted before the GPU area."""
        if not (math.isfinite(gpu_allowance_mb) and gpu_allowance_mb >= 0):
            raise ValueError(f"gpu_allowance_mb must be a number >= 0, got {gpu_allowance_mb}")
        samples = self.samples
        if not samples:
            raise RuntimeError("no samples: start the profiler first")
        with self._lock:
            cases = list(self._cases)
        has_gpu = self.has_gpu
        total = window_summary(samples, samples[0].t_s, samples[-1].t_s, gpu_allowance_mb, has_gpu)
        per_case = tuple((n, a, b, window_summary(samples, a, b, gpu_allowance_mb, has_gpu)) for n, a, b in cases)
        return ProfileReport(total, per_case, self._gpu.describe() if self._gpu else NO_GPU, self._cores,
                             self.interval, float(gpu_allowance_mb), len(samples))

    # -- output ---------------------------------------------------------------------------------------------------

    def write(self, out_dir: str | os.PathLike, gpu_allowance_mb: float = 0.0,
              extra: dict[str, Any] | None = None, plot: bool = True) -> ProfileReport:
        """Write ``profile.json`` (report + ``extra``), ``samples.csv``, ``cases.csv`` (if cases were marked) and
        ``profile.png`` to ``out_dir`` (created), each atomically. Returns the report."""
        report = self.report(gpu_allowance_mb)
        write_profile(out_dir, self.samples, report, extra, plot)
        return report


# ---------------------------------------------------------------------------------------------------------------
# commands


def _exit_status(returncode: int) -> int:
    """A child's exit status as a shell reports it: killed by signal N -> 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def profile_command(argv: Sequence[str], out_dir: str | os.PathLike, interval: float = 0.1,
                    gpu_allowance_mb: float = 0.0, plot: bool = True) -> int:
    """Run ``argv`` as a child process while profiling it and its descendants; write the profile to ``out_dir``.

    Returns the child's exit code (128 + N if a signal N ended it). The child inherits stdin, stdout and stderr.
    A Ctrl-C reaches the child too (same process group): the profiler waits for it to end and still writes the
    profile. Raises FileNotFoundError when the command does not exist, ValueError for an empty command.
    """
    argv = [str(a) for a in argv]
    if not argv:
        raise ValueError("no command to profile")
    if not (math.isfinite(gpu_allowance_mb) and gpu_allowance_mb >= 0):
        raise ValueError(f"gpu_allowance_mb must be a number >= 0, got {gpu_allowance_mb}")
    prof = ResourceProfiler(interval)
    prof.prepare()  # so that the first sample follows the child's start closely
    try:
        child = subprocess.Popen(argv)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{argv[0]}: command not found") from e
    except PermissionError as e:
        raise FileNotFoundError(f"{argv[0]}: not executable ({e.strerror})") from e
    prof.track(child.pid)
    prof.start()
    try:
        try:
            returncode = child.wait()
        except KeyboardInterrupt:
            returncode = child.wait()
    finally:
        prof.stop()
    code = _exit_status(returncode)
    name = signal.Signals(-returncode).name if returncode < 0 and -returncode in signal.valid_signals() else None
    report = prof.write(out_dir, gpu_allowance_mb,
                        extra={"command": argv, "exit_code": code, "signal": name}, plot=plot)
    log.debug("profile of %s written to %s: %s", argv, out_dir, report.total)
    return code
