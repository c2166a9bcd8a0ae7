"""Profiles as data and files: :class:`Sample`, FLARE 2022's measures over a time window (:class:`ResourceSummary`),
the whole :class:`ProfileReport`, and the files ``profile.json``, ``samples.csv``, ``cases.csv``, ``profile.png``.

Measures: running time; peak GPU memory; area under the GPU memory-time curve (MB*s, trapezoids, counting only
memory above an allowance: FLARE 2022 allowed 2048 MB); area under the CPU utilisation-time curve (%*s; each
sample's average times its interval); peak RAM. One busy core for 10 s on an 8-core machine adds
12.5 % * 10 s = 125 %*s.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cps3d.evaluation.meters import NO_GPU
from cps3d.files import atomic_path, write_csv, write_json

__all__ = ["Sample", "ResourceSummary", "ProfileReport", "window_summary", "write_profile"]


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
        names = {f.name for f in dataclasses.fields(ResourceSummary)}
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


def window_summary(samples: Sequence[Sample], start: float, end: float, allowance: float,
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


def write_profile(out_dir: str | os.PathLike, samples: Sequence[Sample], report: ProfileReport,
                  extra: dict[str, Any] | None = None, plot: bool = True) -> None:
    """Write ``profile.json`` (report + ``extra``), ``samples.csv``, ``cases.csv`` (if cases were marked) and
    ``profile.png`` to ``out_dir`` (created), each atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "profile.json", {**report.to_dict(), **(extra or {})})
    write_csv(out / "samples.csv", [asdict(s) for s in samples], [f.name for f in dataclasses.fields(Sample)])
    if report.cases:
        rows = [{"case": n, "start_s": a, "end_s": b, **asdict(s)} for n, a, b, s in report.cases]
        write_csv(out / "cases.csv", rows,
                  ["case", "start_s", "end_s", *[f.name for f in dataclasses.fields(ResourceSummary)]])
    if plot:
        _plot(out / "profile.png", samples, report)


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
