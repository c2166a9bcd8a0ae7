"""Benchmark: peak memory (RSS) and wall time of ``cps3d predict`` on one large scan, each setting in a fresh process.

Scan: a synthetic 512 x 512 x 300 int16 CT-like volume at 0.8 x 0.8 x 1.0 mm, made with numpy. Model: the tiny CPS
model of the tests (patch 16 x 32 x 32, 3 classes, plan spacing 3 x 1.5 x 1.5 mm), trained for one short epoch here
unless --model is given. Each setting runs in a fresh process, in this process only (as ``num_processes=1``): the
pipeline of ``cps3d predict`` called phase by phase with the same functions (``prepare_case``, the predictor,
``export_case``). The table gives each phase's time and peak RSS (Linux VmHWM, reset between phases) and the peak
RSS of the whole run (the largest phase peak), which includes torch, nnU-Net and the model (about 0.8-0.9 GB here).
Post-processing is off except in the row that says so, so that rows compare with stock nnU-Net, which has none.

Settings (rows):
- ``low-memory``: our default export (logits resampled one class at a time, running argmax);
- ``nnU-Net export``: ours with nnU-Net's export of all classes at once (``export_mode="nnunet"``), the reference
  for the low-memory claim;
- ``probabilities``: ``--save-probabilities`` (nnU-Net's export plus CASE.npz / CASE.pkl);
- each with forced spacing ``off`` and ``paper``; one row with our default post-processing (largest component);
- ``fast path (torch)``: ``resampling="torch"``, nnU-Net's torch resampling on the network's device for the scan and
  the export (:mod:`cps3d.inference.fast`), forced spacing ``off`` and ``paper``;
- ``torch export``: ``resampling="torch-export"``, the scan resampled by nnU-Net's preprocessing, the export on
  nnU-Net's torch resampling, forced spacing ``off`` and ``paper``;
- ``stock nnU-Net``: ``nnUNetPredictor.predict_from_files_sequential``, same weights, step 0.7, no mirroring (--stock);
- ``export only, C classes``: the low-memory and nnU-Net export paths on synthetic logits with C classes (random, fp16, at the
  network shape of the same scan), since memory of the export grows with the number of classes (--export-classes).

Runs alternate between settings (repeat r runs every setting once, in a rotated order) and the table gives medians.
With ``--stock``, every row's label map is also compared voxel by voxel with stock nnU-Net's (fraction that agrees).

    python benchmarks/predict_memory.py [--shape 512 512 300] [--spacing 0.8 0.8 1.0] [--repeats 1] [--stock]
        [--export-classes 14]
        [--work-dir DIR] [--model MODEL_DIR] [--device cpu] [--threads 1] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

from common import (  # noqa: E402
    REPO,
    fmt,
    machine_info,
    machine_line,
    markdown_table,
    median,
    peak_rss_since_reset_mb,
    rss_mb,
    run_worker,
    save_json,
)

SETTINGS = {
    # name: (forced spacing, save probabilities, export mode, post-processing, resampling)
    "low-memory, forced off": ("off", False, "low_memory", False, "exact"),
    "nnU-Net export, forced off": ("off", False, "nnunet", False, "exact"),
    "probabilities, forced off": ("off", True, "nnunet", False, "exact"),
    "low-memory, forced paper": ("paper", False, "low_memory", False, "exact"),
    "nnU-Net export, forced paper": ("paper", False, "nnunet", False, "exact"),
    "probabilities, forced paper": ("paper", True, "nnunet", False, "exact"),
    "low-memory + post-processing, forced off": ("off", False, "low_memory", True, "exact"),
    "fast path (torch), forced off": ("off", False, "low_memory", False, "torch"),
    "fast path (torch), forced paper": ("paper", False, "low_memory", False, "torch"),
    "torch export, forced off": ("off", False, "low_memory", False, "torch-export"),
    "torch export, forced paper": ("paper", False, "low_memory", False, "torch-export"),
}
STOCK = "stock nnU-Net (step 0.7, no TTA)"
EXPORT_ONLY = "export only"
# (probabilities are left out here: C float32 maps at full resolution plus their compression; see the 3-class rows)
EXPORT_MODES = {"low-memory": ("low_memory", False), "nnU-Net export": ("nnunet", False)}


def _quiet_env(threads: int | None = None) -> None:
    os.environ.setdefault("nnUNet_n_proc_DA", "0")
    os.environ.setdefault("nnUNet_compile", "false")
    if threads is not None:  # nnU-Net's torch thread count for the sliding window and the export
        os.environ["nnUNet_def_n_proc"] = str(threads)


def ensure_model(work_dir: Path) -> Path:
    """The tests' tiny CPS model (toy dataset, patch 16 x 32 x 32), trained for one short epoch, reused if there."""
    from cps3d.training.run import model_folder

    raw, pre, res = work_dir / "raw", work_dir / "preprocessed", work_dir / "results"
    folder = model_folder(res, "Dataset901_Toy", "cps", "cps3dPlans", "3d_fullres")
    if (folder / "fold_0" / "checkpoint_final.pth").is_file():
        return folder
    sys.path.insert(0, str(REPO / "tests"))
    from cps3d.dataset import RawDataset
    from cps3d.fingerprint import ensure_fingerprint
    from cps3d.planning import PlanConfig, plan_experiment
    from cps3d.preprocessing import preprocess
    from cps3d.training.config import TrainConfig
    from cps3d.training.run import train
    from toy_data import write_toy_dataset

    ds = RawDataset.load(write_toy_dataset(raw))
    fp = ensure_fingerprint(ds, pre, progress=False)
    plans = plan_experiment(raw, pre, ds.name, PlanConfig(configurations=("3d_fullres",), patch_size=(16, 32, 32),
                                                          n_stages=3, base_features=4, max_features=16,
                                                          batch_size=2), fp["cps3d"])
    preprocess(ds, pre, plans, "3d_fullres", progress=False)
    trainer = train(ds.name, pre, res, "3d_fullres", 0,
                    TrainConfig(epochs=1, iters_per_epoch=2, val_iters=1, final_validation=False),
                    device="cpu", show_progress=False)
    return Path(trainer.output_folder).parent


def ensure_scan(work_dir: Path, shape_xyz: tuple[int, int, int], spacing: tuple[float, float, float]) -> Path:
    """A CT-like int16 scan (air, body ellipse, two organs, noise), built slice by slice to keep memory low."""
    import numpy as np
    import SimpleITK as sitk

    nx, ny, nz = shape_xyz
    path = work_dir / "scans" / f"big_{nx}x{ny}x{nz}_0000.nii.gz"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    y, x = np.meshgrid(np.linspace(-1, 1, ny), np.linspace(-1, 1, nx), indexing="ij")
    body = (y / 0.7) ** 2 + (x / 0.9) ** 2 < 1
    vol = np.empty((nz, ny, nx), np.int16)
    for k in range(nz):
        z = 2 * k / max(nz - 1, 1) - 1
        s = np.where(body, 40, -1000).astype(np.int16)
        s[((x + 0.35) / 0.3) ** 2 + (y / 0.3) ** 2 + (z / 0.7) ** 2 < 1] = 120
        s[((x - 0.4) / 0.15) ** 2 + ((y - 0.2) / 0.15) ** 2 + (z / 0.5) ** 2 < 1] = 200
        vol[k] = s + rng.integers(-20, 21, s.shape, dtype=np.int16)
    image = sitk.GetImageFromArray(vol)
    image.SetSpacing(spacing)
    tmp = path.with_name(".tmp_" + path.name)
    sitk.WriteImage(image, str(tmp))
    os.replace(tmp, path)
    return path


def _reset_hwm() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so that the next phase's peak is its own."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def worker(spec: dict) -> dict:
    """One setting, in this (fresh) process: the pipeline of ``cps3d.inference.predict`` called phase by phase
    (read + preprocess, network, export + post-processing + write) with the same functions, so that each phase's
    peak RSS can be read (VmHWM, reset between phases). ``peak_rss_mb`` is the whole process's peak (ru_maxrss)."""
    _quiet_env()
    import torch

    from cps3d.inference.export import ExportJob, export_case
    from cps3d.inference.fast import resample_to_plan, segmentation_torch, torch_export, torch_preprocessing
    from cps3d.inference.forced_spacing import parse_forced_spacing
    from cps3d.inference.inputs import Case
    from cps3d.inference.model import load_model
    from cps3d.inference.postprocessing import Postprocessing
    from cps3d.inference.predictor import PredictConfig, make_predictor, prepare_case

    model = load_model(spec["model_dir"])
    out = Path(spec["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    rss_start = rss_mb()
    phases: dict[str, dict] = {}

    def phase(name: str, t0: float, rss0: float | None) -> None:
        phases[name] = {"s": time.perf_counter() - t0, "peak_mb": peak_rss_since_reset_mb(), "start_mb": rss0}
        _reset_hwm()

    if spec["variant"].startswith(EXPORT_ONLY):
        import numpy as np

        # export of synthetic logits with many classes (FLARE: 14) at the network shape of the real pipeline
        n_classes, export_mode, save_probabilities = spec["classes"], spec["export_mode"], spec["probabilities"]
        prepared = prepare_case(Case("big", (spec["scan"],)), model.plans, model.configuration, model.dataset_json,
                                None)
        dataset_json = {**model.dataset_json, "labels": {"background": 0, **{f"organ_{k}": k
                                                                             for k in range(1, n_classes)}}}
        shape = prepared.pop("data").shape[1:]
        logits = np.random.default_rng(0).normal(0, 1, (n_classes, *shape)).astype(np.float16)
        job = ExportJob("big", logits, prepared["properties"], model.plans, model.configuration, dataset_json,
                        str(out), model.dataset_json["file_ending"], "plans", save_probabilities, export_mode,
                        Postprocessing("none"))
        del logits, prepared
        _reset_hwm()
        t0, rss0 = time.perf_counter(), rss_mb()
        export_case(job)
        del job
        phase("export+write", t0, rss0)
        network_shape = list(shape)
    elif spec["variant"] == STOCK:
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        pm = model.plans_manager
        pred = nnUNetPredictor(tile_step_size=0.7, use_mirroring=False,
                               perform_everything_on_device=spec["device"] == "cuda",
                               device=torch.device(spec["device"]), allow_tqdm=False)
        pred.manual_initialization(model.build_network(), pm, pm.get_configuration(model.configuration),
                                   model.parameters, model.dataset_json, model.trainer_name, model.mirror_axes)
        _reset_hwm()
        t0 = time.perf_counter()
        pred.predict_from_files_sequential([[spec["scan"]]], [str(out / "big")], save_probabilities=False,
                                           overwrite=True)
        phase("total", t0, rss_start)
        network_shape = None
    else:
        forced, save_probabilities, export_mode, postprocess, resampling = SETTINGS[spec["variant"]]
        config = PredictConfig(forced_spacing=parse_forced_spacing(forced), save_probabilities=save_probabilities,
                               export_mode=export_mode, postprocess=postprocess, device=spec["device"],
                               resampling=resampling, num_processes=1, progress=False)
        predictor = make_predictor(model, config)
        _reset_hwm()
        t0, rss0 = time.perf_counter(), rss_mb()
        case = Case("big", (spec["scan"],))
        prepared = prepare_case(case, model.plans, model.configuration, model.dataset_json, config.forced_spacing,
                                resampling)
        network_shape = prepared["info"]["network_shape"]
        data = torch.from_numpy(prepared.pop("data"))
        if torch_preprocessing(resampling):  # as the predictor does it: to the plan spacing on the network's device
            data = resample_to_plan(data, prepared["resample_target"], predictor.configuration_manager,
                                    predictor.device)
        phase("read+preprocess", t0, rss0)
        t0, rss0 = time.perf_counter(), rss_mb()
        logits = predictor.predict_logits_from_preprocessed_data(data)
        del data
        job = ExportJob("big", None, prepared["properties"], model.plans, model.configuration,
                        model.dataset_json, str(out), model.dataset_json["file_ending"], "plans", save_probabilities,
                        export_mode, Postprocessing.for_model(model.model_dir, postprocess))
        if not torch_export(resampling):
            job.logits = logits.cpu().numpy()
            del logits
        phase("network", t0, rss0)
        t0, rss0 = time.perf_counter(), rss_mb()
        if torch_export(resampling):
            job.label_map = segmentation_torch(logits, predictor.plans_manager, predictor.configuration_manager,
                                               predictor.label_manager, prepared["properties"])
            del logits
        del prepared
        export_case(job)
        del job
        phase("export+write", t0, rss0)
    # the VmHWM resets also reset ru_maxrss, so the whole run's peak is the largest phase peak
    peaks = [p["peak_mb"] for p in phases.values() if p["peak_mb"] is not None]
    peak = max(peaks) if peaks else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"variant": spec["variant"], "peak_rss_mb": peak, "rss_before_mb": rss_start, "phases": phases,
            "wall_s": sum(p["s"] for p in phases.values()), "network_shape": network_shape}


def _out_dir(work_dir: Path, variant: str) -> Path:
    return work_dir / "out" / variant.replace(" ", "_").replace(",", "").replace(":", "")


def _label_map(work_dir: Path, variant: str):
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(_out_dir(work_dir, variant) / "big.nii.gz")))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", metavar="SPEC.json", help=argparse.SUPPRESS)
    p.add_argument("--shape", type=int, nargs=3, default=(512, 512, 300), metavar=("X", "Y", "Z"))
    p.add_argument("--spacing", type=float, nargs=3, default=(0.8, 0.8, 1.0), metavar=("SX", "SY", "SZ"))
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--stock", action="store_true", help="add stock nnU-Net (predict_from_files_sequential)")
    p.add_argument("--export-classes", type=int, metavar="C",
                   help="add export-only rows with C classes of synthetic logits (e.g. 14, as FLARE 2022)")
    p.add_argument("--only", nargs="+", metavar="N", type=int, help="run only these setting numbers (1-based)")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/cps3d_bench_predict"))
    p.add_argument("--model", type=Path, help="model folder (default: the tests' tiny model, built in --work-dir)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (nnUNet_def_n_proc; default 1: on a shared machine more threads than free "
                   "cores slow the network down many times)")
    p.add_argument("--json", type=Path, help="also write the raw results here")
    args = p.parse_args()
    if args.worker:
        spec = json.loads(Path(args.worker).read_text())
        result = worker(spec)
        Path(spec["result_file"]).write_text(json.dumps(result))
        return 0

    _quiet_env(args.threads)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    info = machine_info(args.device)
    model = args.model or ensure_model(args.work_dir)
    t = time.perf_counter()
    scan = ensure_scan(args.work_dir, tuple(args.shape), tuple(args.spacing))
    print(f"scan {scan} ({time.perf_counter() - t:.0f} s); model {model}", file=sys.stderr)
    variants = list(SETTINGS) + ([STOCK] if args.stock else [])
    extra: dict[str, dict] = {}
    if args.export_classes:
        for name, (mode, probabilities) in EXPORT_MODES.items():
            v = f"{EXPORT_ONLY}, {args.export_classes} classes: {name}"
            extra[v] = {"classes": args.export_classes, "export_mode": mode, "probabilities": probabilities}
            variants.append(v)
    if args.only:
        variants = [variants[i - 1] for i in args.only]
    results: dict[str, list[dict]] = {v: [] for v in variants}
    for r in range(args.repeats):
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        for v in order:
            spec = {"variant": v, "model_dir": str(model), "scan": str(scan), "device": args.device,
                    "out_dir": str(_out_dir(args.work_dir, v)),
                    **extra.get(v, {})}
            res = run_worker(Path(__file__), spec)
            results[v].append(res)
            print(f"  repeat {r + 1}: {v}: {res['wall_s']:.1f} s, peak RSS {res['peak_rss_mb']:.0f} MB, phases "
                  f"{res['phases']}", file=sys.stderr)
    names = ["read+preprocess", "network", "export+write"]
    rows = []
    for v in variants:
        rs = results[v]

        def med(key: str, name: str, rs=rs) -> float:
            vals = [x["phases"][name][key] for x in rs if name in x["phases"] and x["phases"][name][key] is not None]
            return median(vals)

        cells = [v, fmt(median([x["wall_s"] for x in rs]), 3, " s")]
        for n in names:
            cells.append(f"{fmt(med('s', n), 3, ' s')} / {med('peak_mb', n):,.0f} MB" if rs[0]["phases"].get(n)
                         else "n/a")
        cells += [f"{median([x['peak_rss_mb'] for x in rs]):,.0f} MB",
                  " x ".join(map(str, rs[0]["network_shape"] or [])) or "n/a"]
        rows.append(cells)
    print(f"\npredict one {' x '.join(map(str, args.shape))} scan at {' x '.join(map(str, args.spacing))} mm, "
          f"{args.device}, {args.threads} torch thread(s), {args.repeats} repeat(s), medians; per phase: time / "
          "peak RSS of the process during that phase")
    print(machine_line(info))
    print(f"RSS after imports and model loading: {median([x['rss_before_mb'] for x in results[variants[0]]]):,.0f} "
          "MB")
    header = ["setting", "wall", *names, "peak RSS (whole run)", "network input"]
    if STOCK in results:  # every label map against stock nnU-Net's
        header.append("voxels agreeing with stock")
        stock_map = _label_map(args.work_dir, STOCK)
        for v, cells in zip(variants, rows):
            other = _label_map(args.work_dir, v) if not v.startswith(EXPORT_ONLY) else None
            cells.append("n/a" if other is None or other.shape != stock_map.shape
                         else f"{float((other == stock_map).mean()):.5f}")
    print(markdown_table(header, rows))
    if args.json:
        save_json(args.json, {"machine": info, "args": {k: str(v) for k, v in vars(args).items()},
                              "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
