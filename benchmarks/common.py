"""Helpers shared by the benchmark scripts: medians and ratios, Markdown tables, a description of the machine, raw
results as JSON, and running one measurement in a fresh Python process (so that its peak memory is its own).

Scripts import it as ``from common import ...`` (``benchmarks/`` is the script's own folder, hence on ``sys.path``).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

NOISE_NOTE = ("Machine shared with other jobs: absolute timings are noisy; the ratios (same run, alternating "
              "measurements) are the figures to compare.")


def rss_mb() -> float:
    """This process's resident memory now, in MB (the package's reader, psutil)."""
    from cps3d.evaluation.meters import process_rss_mb

    return process_rss_mb()


def peak_rss_since_reset_mb() -> float | None:
    """This process's peak resident memory since the last reset (``VmHWM`` of ``/proc/self/status``; reset by
    writing 5 to ``/proc/self/clear_refs``) in MB, None where /proc is absent. Read here, not with psutil or the
    package, because neither reads this resettable peak: the per-phase peaks of ``predict_memory.py`` need it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def publish(result: dict, text: str, json_path: str | os.PathLike | None) -> None:
    """Print a benchmark's Markdown report and keep it, with the raw results, in ``json_path`` (if given)."""
    result["markdown"] = text
    print(text)
    if json_path:
        save_json(json_path, result)


def median(values: Sequence[float]) -> float:
    """Median of ``values``; NaN for an empty sequence."""
    return float(statistics.median(values)) if len(values) else math.nan


def ratio(a: float, b: float) -> float:
    """``a / b``, NaN when either is missing or ``b`` is 0."""
    if b == 0 or math.isnan(a) or math.isnan(b):
        return math.nan
    return a / b


def fmt(value: float | None, digits: int = 3, suffix: str = "") -> str:
    """A number for a table cell with ``digits`` significant digits; 'n/a' for None or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}g}{suffix}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[bool] | None = None) -> str:
    """A Markdown pipe table, columns padded for reading in a terminal. ``right[i]``: right-align column i (default:
    every column but the first)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    if any(len(r) != len(header) for r in cells):
        raise ValueError(f"every row needs {len(header)} cells")
    right = list(right) if right is not None else [i > 0 for i in range(len(header))]
    widths = [max(3, *(len(r[i]) for r in cells)) for i in range(len(header))]

    def line(r: Sequence[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if a else c.ljust(w) for c, w, a in zip(r, widths, right)) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if a else (":" + "-" * (w + 1)) for w, a in zip(widths, right)) + "|"
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])


def machine_info(device: str = "cpu") -> dict:
    """Date (UTC), host, processor count, load average, Python and torch versions, and the GPU's name on CUDA."""
    info: dict[str, Any] = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "device": device,
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if device.startswith("cuda") and torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["cuda"] = torch.version.cuda
    except ImportError:  # the scripts need torch anyway; the description must not be the thing that fails
        info["torch"] = None
    return info


def machine_line(info: dict) -> str:
    """One line describing where the figures were measured."""
    where = info.get("gpu") or f"{info['cpus']} CPU cores"
    load = info.get("load_average_1min")
    load_txt = f", load average {load:.1f} at start" if load is not None else ""
    return (f"{info['date_utc']}, {info['host']}: {where}{load_txt}; Python {info['python']}, "
            f"torch {info.get('torch')}")


def save_json(path: str | os.PathLike, payload: dict) -> None:
    """Write the raw results atomically (cps3d.files.write_json)."""
    from cps3d.files import write_json

    write_json(Path(path), payload)


def run_worker(script: Path, spec: dict, timeout_s: float | None = None, env: dict | None = None) -> dict:
    """Run ``python script --worker SPEC.json`` in a fresh process and return the JSON it writes to
    ``spec["result_file"]`` (set here). Its output is kept and shown only if it fails (RuntimeError)."""
    with tempfile.TemporaryDirectory(prefix="cps3d_bench_") as tmp:
        spec = {**spec, "result_file": str(Path(tmp) / "result.json")}
        spec_file = Path(tmp) / "spec.json"
        spec_file.write_text(json.dumps(spec))
        proc = subprocess.run([sys.executable, str(script), "--worker", str(spec_file)], capture_output=True,
                              text=True, timeout=timeout_s, env={**os.environ, **(env or {})})
        result = Path(spec["result_file"])
        if proc.returncode != 0 or not result.is_file():
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
            raise RuntimeError(f"benchmark worker {spec.get('variant', '')} failed (exit {proc.returncode}):\n{tail}")
        return json.loads(result.read_text())


def prepare_phantom_dataset(work_dir: Path, size: str, labeled: int, unlabeled: int, dataset_id: int, name: str,
                            plan_config: Any, num_processes: int = 1, progress: bool = False,
                            seed: int = 0) -> tuple[Any, Path, dict]:
    """Phantom dataset, fingerprint and plans under ``work_dir`` (``raw/``, ``preprocessed/``), reusing what exists.

    Returns ``(RawDataset, preprocessed_root, plans)``. A dataset folder already there with other case counts is an
    error (choose another ``--work-dir``), since the timings would not be the ones asked for.
    """
    from cps3d.dataset import RawDataset
    from cps3d.fingerprint import FingerprintConfig, ensure_fingerprint
    from cps3d.phantoms import write_dataset
    from cps3d.planning import plan_experiment

    raw, pre = work_dir / "raw", work_dir / "preprocessed"
    folder = raw / f"Dataset{dataset_id:03d}_{name}"
    if not (folder / "dataset.json").is_file():
        write_dataset(raw, labeled, unlabeled, 0, seed=seed, size=size, dataset_id=dataset_id, name=name,
                      num_processes=num_processes, progress=progress)
    ds = RawDataset.load(folder)
    found = (len(ds.labeled_cases()), len(ds.unlabeled_cases()))
    if found != (labeled, unlabeled):
        raise ValueError(f"{folder} holds {found[0]} labeled and {found[1]} unlabeled cases, not {labeled} and "
                         f"{unlabeled}: use another --work-dir")
    fp = ensure_fingerprint(ds, pre, FingerprintConfig(), num_processes=num_processes, progress=progress)
    plans = plan_experiment(raw, pre, ds.name, plan_config, fp["cps3d"])
    return ds, pre, plans
