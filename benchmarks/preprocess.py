"""Benchmark: preprocessing throughput, cps3d's unlabeled path against nnU-Net's own preprocessing of labeled scans.

- nnU-Net: ``DefaultPreprocessor.run_case_save`` on a labeled case (image + segmentation: crop, normalise, resample
  both, sample foreground locations for oversampling, store as blosc2);
- cps3d: ``cps3d.preprocessing.preprocess_case`` with ``label_file=None`` on the same image (the unlabeled path:
  no segmentation to resample and no foreground locations; stored atomically).

Both sides read the same phantom scans (``cps3d.phantoms``, size medium by default: the labeled cases' images, the
label only on nnU-Net's side) with the same plans (nnU-Net's ResEnc-M planner on cps3d's fingerprint). With 1
process everything runs in this process; with N > 1 one pool of N spawned workers (warmed up: imports done) serves
both sides, so the figures are steady-state throughput, not pool start-up. Runs alternate (nnU-Net, cps3d, then
cps3d, nnU-Net, ...); the table gives the median cases per minute and the ratio cps3d / nnU-Net. A check compares the
two sides' preprocessed images (they must be identical: the label does not change the image's preprocessing).

    python benchmarks/preprocess.py [--cases 6] [--processes 1 2] [--repeats 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    NOISE_NOTE,
    machine_info,
    machine_line,
    markdown_table,
    median,
    prepare_phantom_dataset,
    publish,
    ratio,
)

CONFIGURATION = "3d_fullres"
SIDES = ("nnunet", "cps3d")
LABELS = {"nnunet": "nnU-Net run_case_save, labeled", "cps3d": "cps3d preprocess_case, unlabeled"}


def nnunet_case(out_folder: str, case: str, image_files: list[str], label_file: str, plans: dict,
                configuration: str, dataset_json: dict) -> None:
    """nnU-Net's own preprocessing and storage of one labeled case (``out_folder/case.{b2nd,pkl}``)."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(plans)
    DefaultPreprocessor(verbose=False).run_case_save(os.path.join(out_folder, case), image_files, label_file, pm,
                                                     pm.get_configuration(configuration), dataset_json)


def cps3d_case(out_folder: str, case: str, image_files: list[str], label_file: str, plans: dict,
               configuration: str, dataset_json: dict) -> None:
    """cps3d's preprocessing of the same scan as an unlabeled case (the label file is ignored)."""
    from cps3d.preprocessing import preprocess_case

    # verify=False: what 'cps3d preprocess' runs after its dataset check has read every file (measured as before)
    preprocess_case(out_folder, case, image_files, None, plans, configuration, dataset_json, verify=False)


FUNCTIONS = {"nnunet": nnunet_case, "cps3d": cps3d_case}


def _warm_up() -> int:
    """Import what both sides need (run once in each pool worker before timing)."""
    import nnunetv2.preprocessing.preprocessors.default_preprocessor  # noqa: F401
    import nnunetv2.training.dataloading.nnunet_dataset  # noqa: F401

    import cps3d.preprocessing  # noqa: F401

    return os.getpid()


def run_side(side: str, work: list[tuple], out_folder: Path, pool: ProcessPoolExecutor | None) -> float:
    """Preprocess every case of ``work`` with one side into ``out_folder``; returns the wall time in seconds."""
    out_folder.mkdir(parents=True, exist_ok=True)
    fn = FUNCTIONS[side]
    args = [(str(out_folder),) + w for w in work]
    t0 = time.perf_counter()
    if pool is None:
        for a in args:
            fn(*a)
    else:
        for f in [pool.submit(fn, *a) for a in args]:
            f.result()  # re-raises a worker's error
    return time.perf_counter() - t0


def compare_outputs(folders: dict[str, Path], cases: list[str]) -> dict:
    """Largest absolute difference and shape agreement of the two sides' preprocessed images."""
    import blosc2
    import numpy as np

    max_diff, same_shape = 0.0, True
    for case in cases:
        a = np.asarray(blosc2.open(str(folders["nnunet"] / f"{case}.b2nd"), mode="r")[:])
        b = np.asarray(blosc2.open(str(folders["cps3d"] / f"{case}.b2nd"), mode="r")[:])
        if a.shape != b.shape:
            same_shape = False
            continue
        max_diff = max(max_diff, float(np.max(np.abs(a - b))) if a.size else 0.0)
    return {"same_shape": same_shape, "max_abs_diff": max_diff}


def stored_shapes(folder: Path, cases: list[str]) -> list[list[int]]:
    """Spatial shape (voxels, transposed axis order) of each stored preprocessed image."""
    import blosc2

    return [list(blosc2.open(str(folder / f"{case}.b2nd"), mode="r").shape[1:]) for case in cases]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=6, help="phantom scans, each preprocessed by both sides (default 6)")
    p.add_argument("--phantom-size", default="medium", choices=("small", "medium", "full"),
                   help="phantom size (default medium: 96-160 voxels in-plane, 48-96 slices)")
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="process counts to measure (default 1 2)")
    p.add_argument("--repeats", type=int, default=3, help="alternating runs per side and process count (default 3)")
    p.add_argument("--work-dir", type=Path, help="keep the phantoms and plans here and reuse them (default: temporary)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write the raw timings and settings here")
    args = p.parse_args(argv)
    for key in ("cases", "repeats"):
        if getattr(args, key) < 1:
            p.error(f"--{key} must be at least 1, got {getattr(args, key)}")
    if any(n < 1 for n in args.processes):
        p.error(f"--processes must be at least 1, got {args.processes}")
    return args


def report(result: dict) -> str:
    """The Markdown table of one benchmark result (as written to --json)."""
    s = result["settings"]
    n = s["cases"]
    rows = []
    for procs in s["processes"]:
        runs = [r for r in result["runs"] if r["processes"] == procs]
        cpm = {side: median([60.0 * n / r["seconds"] for r in runs if r["side"] == side]) for side in SIDES}
        spread = {side: [60.0 * n / r["seconds"] for r in runs if r["side"] == side] for side in SIDES}
        rows.append([str(procs)] + [f"{cpm[side]:.1f} ({min(spread[side]):.1f}-{max(spread[side]):.1f})"
                                     for side in SIDES] + [f"{ratio(cpm['cps3d'], cpm['nnunet']):.2f}x"])
    check = result["check"]
    voxels = [a * b * c for a, b, c in result["shapes"]]
    lines = ["## Preprocessing: cps3d unlabeled vs nnU-Net labeled", "",
             f"Measured {machine_line(result['machine'])}. {NOISE_NOTE}", "",
             f"{n} {s['phantom_size']} phantom scans ({min(voxels) / 1e6:.1f}-{max(voxels) / 1e6:.1f} M voxels each "
             f"after preprocessing at {s['spacing']} mm), {s['repeats']} alternating runs per side and process "
             "count; cases per minute, median (run range).", "",
             markdown_table(["processes", f"{LABELS['nnunet']} [cases/min]", f"{LABELS['cps3d']} [cases/min]",
                             "ratio cps3d / nnU-Net"], rows), "",
             f"Same preprocessed images on both sides: shapes {'equal' if check['same_shape'] else '**differ**'}, "
             f"largest absolute difference {check['max_abs_diff']:.3g}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("nnUNet_def_n_proc", "1")
    from cps3d.planning import PlanConfig, configuration_summary

    info = machine_info("cpu")
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="cps3d_bench_pre_"))
    try:
        t0 = time.perf_counter()
        ds, pre, plans = prepare_phantom_dataset(
            work_dir, args.phantom_size, args.cases, 0, 962, f"BenchPre{args.phantom_size.capitalize()}",
            PlanConfig(configurations=(CONFIGURATION,)), num_processes=min(2, os.cpu_count() or 1), seed=args.seed)
        plan = configuration_summary(plans, CONFIGURATION)
        print(f"data ready in {time.perf_counter() - t0:.0f} s ({work_dir})", file=sys.stderr)
        cases = ds.labeled_cases()
        work = [(case, v["images"], v["label"], plans, CONFIGURATION, ds.dataset_json) for case, v in cases.items()]
        out_root = work_dir / "out"
        runs = []
        check = None
        shapes: list[list[int]] = []
        for procs in args.processes:
            pool = None
            if procs > 1:
                pool = ProcessPoolExecutor(max_workers=procs, mp_context=multiprocessing.get_context("spawn"))
                for f in [pool.submit(_warm_up) for _ in range(procs)]:
                    f.result()
            try:
                for r in range(args.repeats):
                    order = SIDES if r % 2 == 0 else SIDES[::-1]
                    folders = {}
                    for side in order:
                        folder = out_root / f"{side}_p{procs}_r{r}"
                        seconds = run_side(side, work, folder, pool)
                        folders[side] = folder
                        runs.append({"side": side, "processes": procs, "repeat": r, "seconds": seconds})
                        print(f"{procs} process(es), run {r + 1}/{args.repeats}, {side}: {seconds:.1f} s "
                              f"({60 * len(work) / seconds:.1f} cases/min)", file=sys.stderr)
                    if check is None:
                        check = compare_outputs(folders, list(cases))
                        shapes = stored_shapes(folders["cps3d"], list(cases))
                    for folder in folders.values():
                        shutil.rmtree(folder, ignore_errors=True)
            finally:
                if pool is not None:
                    pool.shutdown()
        settings = {k: v for k, v in vars(args).items() if k not in ("json", "work_dir")}
        settings["spacing"] = [round(x, 2) for x in plan["spacing"]]
        result = {"benchmark": "preprocess", "machine": info, "settings": settings, "plan": plan, "runs": runs,
                  "check": check, "shapes": shapes}
        publish(result, report(result), args.json)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work_dir, ignore_errors=True)
        else:
            shutil.rmtree(work_dir / "out", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
