"""Efficiency profiler: FLARE 2022's running measures, sampled while a command or a block of code runs.

A background thread takes a :class:`Sample` every ``interval`` seconds (default 0.1):

- wall time since the start (s);
- CPU utilisation of the whole machine in % of all cores (100 - idle, iowait counted as idle), averaged over the
  interval ending at the sample, from ``/proc/stat`` deltas (``psutil`` when there is no ``/proc``, None when
  neither exists); and the same for the profiled process tree (its processes' user + system time);
- RAM in use on the machine (MemTotal - MemAvailable, MB) and the resident memory of the profiled process tree (MB);
- GPU memory in use (MB), summed over the measured GPUs (NVML from ``nvidia-ml-py``; ``torch.cuda.mem_get_info``
  when NVML is unavailable). It is the device's memory in use, as ``nvidia-smi`` shows it, so other programs on the
  same GPU count too. Without a GPU the GPU fields are None and reports say "no GPU", never 0.

Reported (:class:`ResourceSummary`): running time; peak GPU memory; area under the GPU memory-time curve (MB*s,
trapezoids, counting only memory above ``gpu_allowance_mb``: FLARE 2022 allowed 2048 MB); area under the CPU
utilisation-time curve (%*s; each sample's average times its interval); peak RAM. One busy core for 10 s on an
8-core machine adds 12.5 % * 10 s = 125 %*s.

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
import csv
import io
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cps3d.files import atomic_path, write_json

log = logging.getLogger(__name__)

__all__ = ["Sample", "ResourceSummary", "ProfileReport", "ResourceProfiler", "profile_command", "NO_GPU",
           "FLARE_GPU_ALLOWANCE_MB"]

NO_GPU = "no GPU"
FLARE_GPU_ALLOWANCE_MB = 2048.0  # GPU memory FLARE 2022 did not count in its GPU memory-time area
_MB = 1024.0 * 1024.0


@dataclass(frozen=True)
class Sample:
    """One measurement. ``t_s``: seconds since the profiler started. CPU values are % of all the machine's cores,
    averaged over the interval that ends at this sample (None for the first sample and where unavailable). Memory in
    MB (1 MB = 2^20 bytes); None where unavailable (GPU: no GPU)."""

    t_s: float
    cpu_percent: float | None
    process_cpu_percent: float | None
    ram_used_mb: float | None
    process_rss_mb: float | None
    gpu_used_mb: float | None


# ---------------------------------------------------------------------------------------------------------------
# meters


def _read_proc_stat() -> tuple[int, int, int] | None:
    """(busy, total, number of cores) in clock ticks from /proc/stat, or None without /proc/stat."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    values = [int(v) for v in lines[0].split()[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice]; guest time is already in user and nice
    total = sum(values[:8])
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    cores = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    return total - idle, total, max(cores, 1)


def _read_meminfo_used_mb() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            fields = {line.split(":")[0]: line.split()[1] for line in f if ":" in line}
        return (int(fields["MemTotal"]) - int(fields["MemAvailable"])) / 1024.0
    except (OSError, KeyError, ValueError, IndexError):
        return None


class _ProcTree:
    """CPU time and resident memory of a process and its descendants, from /proc/<pid>/stat."""

    def __init__(self) -> None:
        self.ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self.seen: dict[tuple[int, int], float] = {}  # (pid, start time) -> last CPU seconds seen

    @staticmethod
    def available() -> bool:
        return os.path.isfile(f"/proc/{os.getpid()}/stat")

    def read(self, root: int) -> tuple[float, float]:
        """(cumulative CPU seconds of every process ever seen in the tree, current RSS of the tree in MB).

        A process that ended keeps the CPU time last seen (up to one interval of its last work is lost).
        """
        procs: dict[int, tuple[int, int, float, int]] = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    text = f.read().decode(errors="replace")
            except OSError:
                continue  # ended meanwhile
            rest = text[text.rfind(")") + 2:].split()  # the command name may contain spaces and parentheses
            try:
                ppid, cpu, start, rss = int(rest[1]), int(rest[11]) + int(rest[12]), int(rest[19]), int(rest[21])
            except (IndexError, ValueError):
                continue
            procs[int(name)] = (ppid, start, cpu / self.ticks, rss)
        children: dict[int, list[int]] = {}
        for pid, (ppid, *_rest) in procs.items():
            children.setdefault(ppid, []).append(pid)
        rss_pages = 0
        stack = [root] if root in procs else []
        while stack:
            pid = stack.pop()
            _ppid, start, cpu_s, rss = procs[pid]
            self.seen[(pid, start)] = cpu_s
            rss_pages += rss
            stack.extend(children.get(pid, ()))
        return sum(self.seen.values()), rss_pages * self.page / _MB


class _PsutilMeters:
    """Fallback for systems without /proc (macOS, Windows) when psutil is installed."""

    def __init__(self, psutil: Any) -> None:
        self.psutil = psutil
        self.seen: dict[tuple[int, float], float] = {}

    def machine(self) -> tuple[float, float, int]:
        t = self.psutil.cpu_times()
        total = sum(getattr(t, f) for f in t._fields if f not in ("guest", "guest_nice"))
        idle = t.idle + getattr(t, "iowait", 0.0)
        return total - idle, total, self.psutil.cpu_count() or 1

    def ram_used_mb(self) -> float:
        vm = self.psutil.virtual_memory()
        return (vm.total - vm.available) / _MB

    def tree(self, root: int) -> tuple[float, float]:
        rss = 0.0
        try:
            top = self.psutil.Process(root)
            procs = [top, *top.children(recursive=True)]
        except self.psutil.Error:
            procs = []
        for p in procs:
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    self.seen[(p.pid, p.create_time())] = t.user + t.system
                    rss += p.memory_info().rss
            except self.psutil.Error:
                continue
        return sum(self.seen.values()), rss / _MB


class _Gpu:
    """Memory in use on the measured GPUs: NVML, else torch.cuda, else none."""

    def __init__(self, indices: Sequence[int] | None = None, enabled: bool = True):
        self.source = NO_GPU
        self.names: list[str] = []
        self._read: Callable[[], float] | None = None
        if not enabled:
            return
        if self._try_nvml(indices) or self._try_torch(indices):
            return

    def _try_nvml(self, indices: Sequence[int] | None) -> bool:
        try:
            import pynvml

            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            if count == 0:
                return False
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in _gpu_indices(indices, count)]
            names = [pynvml.nvmlDeviceGetName(h) for h in handles]
        except Exception as e:  # ImportError or any NVMLError: no usable driver
            log.debug("NVML unavailable: %s", e)
            return False
        self.names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        self.source = "NVML"

        def read() -> float:
            return sum(pynvml.nvmlDeviceGetMemoryInfo(h).used for h in handles) / _MB

        self._read = read
        return True

    def _try_torch(self, indices: Sequence[int] | None) -> bool:
        # importing torch only to find no GPU would cost seconds: only if it is loaded or a device node exists
        if "torch" not in sys.modules and not any(n.startswith("nvidia") for n in _listdir("/dev")):
            return False
        try:
            import torch

            if not torch.cuda.is_available():
                return False
            devices = list(indices) if indices is not None else list(range(torch.cuda.device_count()))
            self.names = [torch.cuda.get_device_name(i) for i in devices]
        except Exception as e:
            log.debug("torch.cuda unavailable: %s", e)
            return False
        self.source = "torch.cuda.mem_get_info (includes this process's own CUDA context)"

        def read() -> float:
            used = 0
            for i in devices:
                free, total = torch.cuda.mem_get_info(i)
                used += total - free
            return used / _MB

        self._read = read
        return True

    @property
    def available(self) -> bool:
        return self._read is not None

    def describe(self) -> str:
        if not self.available:
            return NO_GPU
        return f"{', '.join(self.names)} ({self.source})"

    def read(self) -> float | None:
        if self._read is None:
            return None
        try:
            return float(self._read())
        except Exception as e:  # a driver error mid-run: record a gap rather than stop profiling
            log.debug("GPU memory read failed: %s", e)
            return None


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _gpu_indices(indices: Sequence[int] | None, count: int) -> list[int]:
    """Physical GPU indices to measure: the given ones, else those of CUDA_VISIBLE_DEVICES, else all."""
    if indices is not None:
        bad = [i for i in indices if not 0 <= i < count]
        if bad:
            raise ValueError(f"GPU index {bad} out of range: this machine has {count} GPU(s)")
        return list(indices)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return list(range(count))
    items = [v.strip() for v in visible.split(",") if v.strip()]
    if items and all(v.isdigit() and int(v) < count for v in items):
        return [int(v) for v in items]
    log.warning("CUDA_VISIBLE_DEVICES=%r is not a list of GPU indices: measuring all %d GPU(s)", visible, count)
    return list(range(count))


# ---------------------------------------------------------------------------------------------------------------
# reports


@dataclass(frozen=True)
class ResourceSummary:
    """FLARE 2022's measures over a time window. GPU fields are None when there is no GPU; CPU ones when the
    system offers no CPU counters."""

    running_time_s: float
    cpu_area_percent_s: float | None
    process_cpu_area_percent_s: float | None
    peak_ram_mb: float | None
    peak_process_rss_mb: float | None
    peak_gpu_mb: float | None
    gpu_area_mb_s: float | None


@dataclass(frozen=True)
class ProfileReport:
    """Totals, per-case figures (in the order the cases ran) and what was measured."""

    total: ResourceSummary
    cases: tuple[tuple[str, float, float, ResourceSummary], ...]  # (name, start_s, end_s, summary)
    gpu: str  # device names and source, or "no GPU"
    cpu_cores: int | None
    interval_s: float
    gpu_allowance_mb: float
    num_samples: int

    def to_dict(self) -> dict:
        return {
            "total": asdict(self.total),
            "cases": [{"case": n, "start_s": a, "end_s": b, **asdict(s)} for n, a, b, s in self.cases],
            "gpu": self.gpu,
            "cpu_cores": self.cpu_cores,
            "interval_s": self.interval_s,
            "gpu_allowance_mb": self.gpu_allowance_mb,
            "num_samples": self.num_samples,
        }

    @classmethod
    def from_dict(cls, d: dict) -> ProfileReport:
        """Inverse of :meth:`to_dict` (e.g. to read a profile.json back)."""
        names = {f.name for f in _fields(ResourceSummary)}
        cases = tuple((c["case"], c["start_s"], c["end_s"], ResourceSummary(**{k: c[k] for k in names}))
                      for c in d.get("cases", []))
        return cls(ResourceSummary(**{k: d["total"][k] for k in names}), cases, d["gpu"], d["cpu_cores"],
                   d["interval_s"], d["gpu_allowance_mb"], d["num_samples"])

    def format(self) -> str:
        """A short text report of the totals (what ``cps3d profile`` prints)."""
        t = self.total

        def num(v: float | None, unit: str, missing: str = "unavailable") -> str:
            return missing if v is None else f"{v:,.1f} {unit}"

        no_gpu = self.gpu == NO_GPU
        gpu_missing = NO_GPU if no_gpu else "unavailable"
        cores = f" of {self.cpu_cores} cores" if self.cpu_cores else ""
        allowance = f" above {self.gpu_allowance_mb:g} MB" if self.gpu_allowance_mb else ""
        lines = [
            f"running time        {t.running_time_s:.2f} s ({self.num_samples} samples every {self.interval_s:g} s)",
            f"CPU area            {num(t.cpu_area_percent_s, '%*s')} machine{cores}, "
            f"{num(t.process_cpu_area_percent_s, '%*s')} profiled processes",
            f"peak RAM            {num(t.peak_ram_mb, 'MB')} machine, {num(t.peak_process_rss_mb, 'MB')} profiled "
            "processes",
            f"GPU                 {self.gpu}",
            f"peak GPU memory     {num(t.peak_gpu_mb, 'MB', gpu_missing)}",
            f"GPU area            {num(t.gpu_area_mb_s, 'MB*s', gpu_missing)}{allowance if not no_gpu else ''}",
        ]
        if self.cases:
            lines.append(f"cases               {len(self.cases)} (see cases.csv)")
        return "\n".join(lines)


def _window_summary(samples: Sequence[Sample], start: float, end: float, allowance: float,
                    has_gpu: bool) -> ResourceSummary:
    """Measures over the samples with ``start <= t_s <= end`` (CPU intervals must end inside the window)."""
    inside = [s for s in samples if start - 1e-9 <= s.t_s <= end + 1e-9]
    first_t = inside[0].t_s if inside else start

    def area_cpu(attr: str) -> float | None:
        values = [(s.t_s, getattr(s, attr)) for s in inside]
        if not any(v is not None for _, v in values[1:]):
            return None
        total = 0.0
        for (t0, _), (t1, v) in zip(values, values[1:]):
            if v is not None:
                total += v * (t1 - t0)
        return total

    def peak(attr: str) -> float | None:
        values = [getattr(s, attr) for s in inside if getattr(s, attr) is not None]
        return max(values) if values else None

    gpu_area = None
    if has_gpu:
        gpu_area = 0.0
        for a, b in zip(inside, inside[1:]):
            if a.gpu_used_mb is not None and b.gpu_used_mb is not None:
                ga, gb = max(0.0, a.gpu_used_mb - allowance), max(0.0, b.gpu_used_mb - allowance)
                gpu_area += 0.5 * (ga + gb) * (b.t_s - a.t_s)
    last_t = inside[-1].t_s if inside else end
    return ResourceSummary(
        running_time_s=last_t - first_t,
        cpu_area_percent_s=area_cpu("cpu_percent"),
        process_cpu_area_percent_s=area_cpu("process_cpu_percent"),
        peak_ram_mb=peak("ram_used_mb"),
        peak_process_rss_mb=peak("process_rss_mb"),
        peak_gpu_mb=peak("gpu_used_mb") if has_gpu else None,
        gpu_area_mb_s=gpu_area,
    )


# ---------------------------------------------------------------------------------------------------------------
# the profiler


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
        self._gpu: _Gpu | None = None
        self._proc: _ProcTree | None = None
        self._psutil: _PsutilMeters | None = None

    # -- lifecycle ------------------------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Open the meters (NVML, /proc) now rather than at :meth:`start`: opening can take a moment."""
        if self._gpu is not None:
            return
        self._gpu = _Gpu(self._gpu_indices, self._gpu_enabled)
        if os.path.isfile("/proc/stat") and _ProcTree.available():
            self._proc = _ProcTree()
        else:
            try:
                import psutil  # optional; not a dependency

                self._psutil = _PsutilMeters(psutil)
            except ImportError:
                log.warning("no /proc and no psutil: CPU and RAM will not be measured")

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
            cpu = proc_cpu = ram = rss = None
            machine = tree = None
            if self._proc is not None:
                stat = _read_proc_stat()
                if stat is not None:
                    machine = (float(stat[0]), float(stat[1]))
                    self._cores = stat[2]
                ram = _read_meminfo_used_mb()
                tree = self._proc.read(self._pid)
            elif self._psutil is not None:
                busy, total, self._cores = self._psutil.machine()
                machine = (busy, total)
                ram = self._psutil.ram_used_mb()
                tree = self._psutil.tree(self._pid)
            if machine is not None and self._last_machine is not None:
                d_total = machine[1] - self._last_machine[1]
                if d_total > 0:
                    cpu = 100.0 * (machine[0] - self._last_machine[0]) / d_total
            if tree is not None:
                rss = tree[1]
                if self._last_tree is not None and self._cores:
                    dt = now - self._last_tree[0]
                    if dt > 0:
                        proc_cpu = 100.0 * (tree[0] - self._last_tree[1]) / dt / self._cores
                self._last_tree = (now, tree[0])
            self._last_machine = machine if machine is not None else self._last_machine
            gpu = self._gpu.read() if self._gpu is not None else None
            s = Sample(now - self._t0, cpu, proc_cpu, ram, rss, gpu)
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
        total = _window_summary(samples, samples[0].t_s, samples[-1].t_s, gpu_allowance_mb, has_gpu)
        per_case = tuple((n, a, b, _window_summary(samples, a, b, gpu_allowance_mb, has_gpu)) for n, a, b in cases)
        return ProfileReport(total, per_case, self._gpu.describe() if self._gpu else NO_GPU, self._cores,
                             self.interval, float(gpu_allowance_mb), len(samples))

    # -- output ---------------------------------------------------------------------------------------------------

    def write(self, out_dir: str | os.PathLike, gpu_allowance_mb: float = 0.0,
              extra: dict[str, Any] | None = None, plot: bool = True) -> ProfileReport:
        """Write ``profile.json`` (report + ``extra``), ``samples.csv``, ``cases.csv`` (if cases were marked) and
        ``profile.png`` to ``out_dir`` (created), each atomically. Returns the report."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        report = self.report(gpu_allowance_mb)
        samples = self.samples
        write_json(out / "profile.json", {**report.to_dict(), **(extra or {})})
        _write_csv(out / "samples.csv", [asdict(s) for s in samples], [f.name for f in _fields(Sample)])
        if report.cases:
            rows = [{"case": n, "start_s": a, "end_s": b, **asdict(s)} for n, a, b, s in report.cases]
            _write_csv(out / "cases.csv", rows, ["case", "start_s", "end_s", *[f.name for f in _fields(
                ResourceSummary)]])
        if plot:
            _plot(out / "profile.png", samples, report)
        return report


def _fields(cls: type) -> tuple:
    import dataclasses

    return dataclasses.fields(cls)


def _write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else (f"{v:.6g}" if isinstance(v, float) else v)) for k, v in r.items()})
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        f.write(buf.getvalue())


def _plot(path: Path, samples: Sequence[Sample], report: ProfileReport) -> None:
    """CPU, RAM and GPU curves against time, cases shaded (matplotlib's Agg canvas: no display, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    t = [s.t_s for s in samples]
    fig = Figure(figsize=(9, 7.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(3, 1, sharex=True)

    def series(attr: str) -> list[float]:
        return [math.nan if getattr(s, attr) is None else getattr(s, attr) for s in samples]

    ax = axes[0]
    ax.plot(t, series("cpu_percent"), label="machine", drawstyle="steps-pre")
    ax.plot(t, series("process_cpu_percent"), label="profiled processes", drawstyle="steps-pre")
    cores = f" of {report.cpu_cores} cores" if report.cpu_cores else ""
    ax.set_ylabel(f"CPU (%{cores})")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper right", fontsize="small")
    ax = axes[1]
    ax.plot(t, series("ram_used_mb"), label="machine")
    ax.plot(t, series("process_rss_mb"), label="profiled processes (RSS)")
    ax.set_ylabel("RAM (MB)")
    ax.legend(loc="upper right", fontsize="small")
    ax = axes[2]
    if report.gpu == NO_GPU:
        ax.text(0.5, 0.5, NO_GPU, ha="center", va="center", transform=ax.transAxes, fontsize="large")
        ax.set_yticks([])
    else:
        ax.plot(t, series("gpu_used_mb"), label="GPU memory in use")
        if report.gpu_allowance_mb:
            ax.axhline(report.gpu_allowance_mb, color="grey", linestyle="--",
                       label=f"allowance {report.gpu_allowance_mb:g} MB")
        ax.legend(loc="upper right", fontsize="small")
    ax.set_ylabel("GPU memory (MB)")
    ax.set_xlabel("time (s)")
    for i, (_name, a, b, _s) in enumerate(report.cases):
        for ax in axes:
            ax.axvspan(a, b, color="C2" if i % 2 else "C3", alpha=0.08, linewidth=0)
    tot = report.total
    fig.suptitle(f"running time {tot.running_time_s:.1f} s"
                 + (f", CPU area {tot.cpu_area_percent_s:,.0f} %*s" if tot.cpu_area_percent_s is not None else "")
                 + (f", GPU area {tot.gpu_area_mb_s:,.0f} MB*s" if tot.gpu_area_mb_s is not None else ", no GPU"))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


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
