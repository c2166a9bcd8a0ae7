"""What the profiler reads at each sample: CPU time and memory of the machine and of a process tree (psutil), and
GPU memory in use (NVML from ``nvidia-ml-py``, else ``torch.cuda.mem_get_info``, else none).

CPU time is split as the kernel counts it (``/proc/stat`` on Linux): idle and iowait are idle; user, nice, system,
irq, softirq and steal are busy; guest time is already inside user and nice and is not counted twice. RAM in use is
total minus available (``MemTotal - MemAvailable`` on Linux). A process tree's CPU time is its processes' user +
system time; its memory their resident set sizes.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import psutil

log = logging.getLogger(__name__)

__all__ = ["NO_GPU", "MB", "busy_and_total", "machine_cpu", "machine_ram_used_mb", "ProcessTree", "GpuMeter"]

NO_GPU = "no GPU"  # what reports say in place of GPU figures on a machine without a GPU, never 0
MB = 1024.0 * 1024.0


def busy_and_total(times: Any) -> tuple[float, float]:
    """(busy, total) CPU seconds of a ``psutil.cpu_times()`` result, split as the module docstring says."""
    total = sum(getattr(times, f) for f in times._fields if f not in ("guest", "guest_nice"))
    idle = times.idle + getattr(times, "iowait", 0.0)
    return total - idle, total


def machine_cpu() -> tuple[float, float, int]:
    """(busy seconds, total seconds, number of logical cores) of the whole machine since boot."""
    busy, total = busy_and_total(psutil.cpu_times())
    return busy, total, psutil.cpu_count() or 1


def machine_ram_used_mb() -> float:
    """RAM in use on the machine (total - available), MB."""
    vm = psutil.virtual_memory()
    return (vm.total - vm.available) / MB


def process_rss_mb(pid: int | None = None) -> float:
    """Resident memory of one process (this one when ``pid`` is None) in MB, its children not included."""
    return psutil.Process(pid).memory_info().rss / MB


class ProcessTree:
    """CPU time and resident memory of a process and its descendants."""

    def __init__(self) -> None:
        self.seen: dict[tuple[int, float], float] = {}  # (pid, creation time) -> last CPU seconds seen

    def read(self, root: int) -> tuple[float, float]:
        """(cumulative CPU seconds of every process ever seen in the tree, current RSS of the tree in MB).

        A process that ended keeps the CPU time last seen (up to one interval of its last work is lost).
        """
        rss = 0.0
        try:
            top = psutil.Process(root)
            procs = [top, *top.children(recursive=True)]
        except psutil.Error:  # the root has ended
            procs = []
        for p in procs:
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    self.seen[(p.pid, p.create_time())] = t.user + t.system
                    rss += p.memory_info().rss
            except psutil.Error:  # ended meanwhile
                continue
        return sum(self.seen.values()), rss / MB


class GpuMeter:
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
            return sum(pynvml.nvmlDeviceGetMemoryInfo(h).used for h in handles) / MB

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
            return used / MB

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
