"""Benchmark: ``cps3d predict`` against stock nnU-Net's ``nnUNetPredictor``, same weights, same scans
(DESIGN.md sections 5 and 8).

Six ways to predict each scan (one network, network 1 of the model, one fold):

1. stock nnU-Net with its defaults: step 0.5, mirroring (test-time augmentation) on;
2. stock nnU-Net with the paper's settings: step 0.7, no mirroring;
3. cps3d with the paper's protocol: step 0.7, no TTA, forced spacing ``paper`` (0.75 x 0.75 x 0.5 mm rule);
4. cps3d with forced spacing off: step 0.7, no TTA (the like-for-like comparison with 2), exact path;
5. as 4 on cps3d's fastest path (``resampling="torch"``: nnU-Net's torch resampling on the network's device for the
   image and the export);
6. as 4 with ``resampling="torch-export"``: the image resampled by nnU-Net's preprocessing (the plans' cubic spline),
   the export on nnU-Net's torch resampling.

The label maps of 5 and 6 are compared with 2's voxel by voxel and organ by organ (DSC).

Stock nnU-Net has no post-processing, so cps3d runs with post-processing OFF here (``postprocess=False``), with its
default low-memory export. Stock: ``nnUNetPredictor.manual_initialization`` + ``predict_from_files_sequential``
(everything in one process); ours: ``cps3d.inference.predict(..., PredictConfig(num_processes=1))`` (also one
process). Both load the same checkpoint with ``cps3d.inference.load_model`` inside the timed part, and average
parameter sets the same way (``ensemble_average="logits"``, nnU-Net's, should several folds be given).

Per case and variant: wall time (model loading, reading, preprocessing, sliding window, export and writing), peak
RSS of the process (each run is a fresh Python process; ``getrusage`` max RSS, which includes torch, nnU-Net and the
model), peak GPU memory on CUDA (``torch.cuda.max_memory_allocated``), the network's input shape and number of
sliding-window tiles (recorded from nnU-Net's own tiling, ``_internal_get_sliding_window_slicers``, wrapped in the
worker), network evaluations (tiles x mirrorings), and the DSC of the label map against variant 1's (stock
defaults; mean over labels present in either map) and against reference labels (phantoms: the rendered truth; real
CT: TotalSegmentator's labels, themselves model output; mean over the labels variant 1 predicts, i.e. the organs the
model segments at all). Every output is checked to lie on its input's grid, and variant 4's label map is compared
voxel by voxel with variant 2's (same settings: they should be identical). Runs alternate: repeat r runs every
variant once per case, in an order rotated by r (variant 1, eight mirrored passes per tile and by far the slowest, in
the first ``--v1-repeats`` repeats only), after one untimed warm-up run on the real CT; tables give medians.

Scans (``--cases``; made once in ``--work-dir`` and reused):

- ``thin``: a full-size phantom (512 x 512, FLARE-like) with thin slices (<= 1.5 mm) and 151-200 slices;
- ``mid``: a full-size phantom with 2-2.5 mm slices and 150-300 slices (forced spacing shrinks it the most);
- ``thick``: a full-size phantom with slices of 4 mm or more and fewer than 150 slices (forced spacing keeps z);
- ``small``: a small phantom (smoke tests); ``real``: the shipped real CT (tests/data/real_ct, 122 x 101 x 30, 3 mm).

Models (the same weights for all variants):

- default: a small residual-encoder U-Net (patch 32 x 64 x 64, 4 stages, 8-64 features, plan spacing about
  3.8 x 2.7 x 2.7 mm) planned on 8 ``medium`` phantoms and trained (supervised, nnU-Net's trainer via cps3d) for
  ``--train-epochs`` x ``--train-iters`` = 12 x 50 iterations (about 5.5 minutes on 2 cores, once: cached in
  ``--work-dir``). That budget teaches it the liver only (DSC about 0.4-0.5 against the phantom truth); the other
  organs need far more training, so the DSC columns are about one large organ;
- ``--paper-size``: the paper's 3D configuration (patch 112 x 160 x 128, 6 stages, 32-320 features) planned on the
  ``thin``, ``mid`` and ``thick`` full-size phantoms, with UNTRAINED (random) weights: for timing and memory on a GPU;
  DSC values are then meaningless except as a check that equal settings give equal outputs;
- ``--tiny``: a tiny untrained network on ``small`` phantoms, the ``small`` and ``real`` scans, one repeat: a smoke
  test of the script (used by ``benchmarks/gpu_check.sh run ... --tiny``);
- ``--model DIR``: any trained cps3d or nnU-Net model folder.

    python benchmarks/inference.py                  # CPU default: thin, thick, real; 2 repeats; about 16 minutes
    python benchmarks/inference.py --device cuda --paper-size --cases thin --repeats 2 --json inference.json
    python benchmarks/inference.py --profile        # adds one cProfile'd run per case and variant: phase times
    python benchmarks/inference.py --report inference.json   # the tables of an earlier run (or its complete repeats)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    NOISE_NOTE,
    REPO,
    fmt,
    machine_info,
    machine_line,
    markdown_table,
    median,
    prepare_phantom_dataset,
    publish,
    ratio,
    rss_mb,
    run_worker,
    save_json,
)

CONFIGURATION = "3d_fullres"
REAL_CT = REPO / "tests" / "data" / "real_ct" / "ct_sm_0000.nii.gz"
REAL_CT_LABELS = REPO / "tests" / "data" / "real_ct" / "ct_sm_labels_total.nii.gz"

# targets (DESIGN.md section 8 and the inference brief)
TARGET_SAME_TIME = 1.05   # ours, forced spacing off (4) / stock, same settings (2)
TARGET_SAME_RSS = 1.0     # ... peak RAM no higher
RSS_NOISE = 0.01          # peak RSS of identical runs differs by a few MB of about 1 GB (torch, nnU-Net, model)
TARGET_PROTOCOL_TIME = 0.2  # ours, paper protocol (3) / stock defaults (1)
TARGET_FAST_RATIO = 0.5     # fast path (5) / stock, same settings (2): time and peak RSS (issue 14)
TARGET_FAST_AGREEMENT = 0.999  # ... voxels whose labels agree with 2, to make the fast path the default
TARGET_FAST_DSC = 0.995     # ... and every organ's DSC between 5 and 2
TARGET_GPU_SECONDS = 5.0    # fast path on a GPU, a FLARE-sized case with the paper-size network (issue 14)
TARGET_GPU_MB = 2048        # ... peak GPU memory

SCANS_DATASET = (981, "BenchInferScans")
PAPER_PLAN_DATASET = (982, "BenchInferPaperPlan")
SMALL_TRAIN_DATASET = (983, "BenchInferTrain")
TINY_PLAN_DATASET = (984, "BenchInferTiny")


@dataclass(frozen=True)
class Variant:
    """One way to predict. ``impl``: ``stock`` (nnUNetPredictor) or ``ours`` (cps3d.inference.predict);
    ``forced``: a forced-spacing preset name or None (off); ``resampling``: cps3d's ``exact`` path (the plans'
    resampling, identical to stock), its ``torch-export`` or its ``torch`` path (cps3d.inference.fast)."""

    key: str
    name: str
    impl: str
    step: float
    mirroring: bool
    forced: str | None
    resampling: str = "exact"


VARIANTS: tuple[Variant, ...] = (
    Variant("1", "stock nnU-Net, defaults (step 0.5, mirroring)", "stock", 0.5, True, None),
    Variant("2", "stock nnU-Net, paper settings (step 0.7, no mirroring)", "stock", 0.7, False, None),
    Variant("3", "cps3d, paper protocol (step 0.7, no TTA, forced spacing paper)", "ours", 0.7, False, "paper"),
    Variant("4", "cps3d, forced spacing off (step 0.7, no TTA)", "ours", 0.7, False, None),
    Variant("5", "cps3d fast path (torch resampling), forced spacing off (step 0.7, no TTA)", "ours", 0.7, False, None,
            "torch"),
    Variant("6", "cps3d torch export (nnU-Net's preprocessing, torch export), forced spacing off (step 0.7, no TTA)",
            "ours", 0.7, False, None, "torch-export"),
)
FAST = ("5", "6")  # the torch paths, compared with 2 (same settings)
BY_KEY = {v.key: v for v in VARIANTS}


@dataclass(frozen=True)
class ScanKind:
    """A phantom chosen from the generator's stream by its slice count and slice thickness (mm)."""

    name: str
    description: str
    size: str
    slices: tuple[int, int]
    thickness_mm: tuple[float, float]

    def matches(self, n_slices: int, thickness_mm: float) -> bool:
        return (self.slices[0] <= n_slices <= self.slices[1]
                and self.thickness_mm[0] <= thickness_mm <= self.thickness_mm[1])


SCAN_KINDS: dict[str, ScanKind] = {
    "thin": ScanKind("thin", "thin slices (<= 1.5 mm), > 150 slices", "full", (151, 200), (0.0, 1.5)),
    "mid": ScanKind("mid", "2-2.5 mm slices, >= 150 slices", "full", (150, 300), (2.0, 2.5)),
    "thick": ScanKind("thick", "thick slices (>= 4 mm), < 150 slices", "full", (1, 149), (4.0, 100.0)),
    "small": ScanKind("small", "small phantom (smoke test)", "small", (1, 10_000), (0.0, 100.0)),
}
REAL = "real"
CASES = (*SCAN_KINDS, REAL)
PAPER_PLAN_KINDS = ("thin", "mid", "thick")  # median slices 2.5 mm as in FLARE's plans: the paper's 6 stages fit

MODEL_SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(patch=(16, 32, 32), n_stages=3, base_features=4, max_features=16, batch=2),
    "small": dict(patch=(32, 64, 64), n_stages=4, base_features=8, max_features=64, batch=2),
}


def _paper_size() -> dict[str, Any]:
    from train_step import PAPER  # the paper's 3D network, as the training benchmark uses it

    return dict(PAPER)


# ------------------------------------------------------------------------------------------------------ scans
def find_phantom(kind: ScanKind, seed: int, limit: int = 2000):
    """The first phantom of the ``test`` stream of ``seed`` whose grid fits ``kind``: (index, CaseParams)."""
    from cps3d.phantoms import case_rng, sample_case

    for i in range(limit):
        params = sample_case(case_rng(seed, "test", i), kind.size)
        if kind.matches(int(params.grid.shape[0]), float(params.grid.spacing[2])):
            return i, params
    raise ValueError(f"no {kind.size} phantom among the first {limit} of seed {seed} has {kind.slices[0]}-"
                     f"{kind.slices[1]} slices of {kind.thickness_mm[0]}-{kind.thickness_mm[1]} mm")


def _scans_folder(work_dir: Path) -> Path:
    return work_dir / "scans" / f"Dataset{SCANS_DATASET[0]:03d}_{SCANS_DATASET[1]}"


def ensure_scans(work_dir: Path, kinds: list[str], seed: int, num_processes: int) -> dict[str, dict]:
    """Phantom scans of ``kinds`` (rendered once into ``work_dir/scans``) and the real CT.

    Returns ``{case: {"image", "labels", "description"}}``; phantoms are written as labeled cases of a raw dataset
    (``imagesTr/KIND_0000.nii.gz``, ``labelsTr/KIND.nii.gz``) so that ``--paper-size`` can plan on them.
    """
    from cps3d.parallel import imap_cases
    from cps3d.phantoms import write_case_files

    folder = _scans_folder(work_dir)
    out: dict[str, dict] = {}
    todo = []
    for k in kinds:
        if k == REAL:
            if not REAL_CT.is_file():
                raise FileNotFoundError(f"{REAL_CT}: the shipped real CT is missing")
            out[k] = {"image": str(REAL_CT), "labels": str(REAL_CT_LABELS) if REAL_CT_LABELS.is_file() else None,
                      "description": "real CT (TotalSegmentator test scan)", "labels_kind": "TotalSegmentator"}
            continue
        kind = SCAN_KINDS[k]
        index, params = find_phantom(kind, seed)
        image = folder / "imagesTr" / f"{k}_0000.nii.gz"
        labels = folder / "labelsTr" / f"{k}.nii.gz"
        out[k] = {"image": str(image), "labels": str(labels), "labels_kind": "phantom truth",
                  "description": f"{kind.description} (phantom test #{index} of seed {seed})"}
        if not (image.is_file() and labels.is_file()):
            todo.append((str(folder), k, "labeled", params.to_dict()))
    if todo:
        for sub in ("imagesTr", "labelsTr"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        for i, result in imap_cases(write_case_files, todo, num_processes=min(num_processes, len(todo)),
                                    progress=False):
            if isinstance(result, BaseException):
                raise RuntimeError(f"rendering phantom {todo[i][1]} failed: {result}") from result
        _log(f"rendered {', '.join(t[1] for t in todo)} in {time.perf_counter() - t0:.0f} s")
    return out


def _write_dataset_json(folder: Path, n_training: int) -> None:
    """nnU-Net's dataset.json for a folder of phantom cases (FLARE labels), written atomically."""
    import tempfile

    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    from cps3d.phantoms import FLARE_LABELS

    tmp = tempfile.mkdtemp(prefix=".dataset_json.", dir=folder)
    try:
        generate_dataset_json(tmp, channel_names={"0": "CT"}, labels=dict(FLARE_LABELS),
                              num_training_cases=n_training, file_ending=".nii.gz", dataset_name=folder.name,
                              description="full-size phantoms of benchmarks/inference.py (planning only)")
        os.replace(os.path.join(tmp, "dataset.json"), folder / "dataset.json")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _link_or_copy(src: Path, dst: Path) -> None:
    if dst.is_file():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


# ------------------------------------------------------------------------------------------------------ models
def _untrained_model(model_dir: Path, plans: dict, dataset_json: dict, seed: int) -> Path:
    """An nnU-Net-format model folder (plans.json, dataset.json, fold_all/checkpoint_final.pth) holding the plan's
    network with random initial weights (torch's default initialisation, seeded). Reused when present."""
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from cps3d.files import atomic_path, write_json

    ckpt_path = model_dir / "fold_all" / "checkpoint_final.pth"
    if ckpt_path.is_file():
        return model_dir
    pm = PlansManager(plans)
    cm = pm.get_configuration(CONFIGURATION)
    n_in = determine_num_input_channels(pm, cm, dataset_json)
    n_out = pm.get_label_manager(dataset_json).num_segmentation_heads
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = nnUNetTrainer.build_network_architecture(pm, cm, n_in, n_out, enable_deep_supervision=False)
    ckpt_path.parent.mkdir(parents=True, exist_ok=True)
    write_json(model_dir / "plans.json", plans)
    write_json(model_dir / "dataset.json", dataset_json)
    checkpoint = {"network_weights": network.state_dict(), "optimizer_state": None, "grad_scaler_state": None,
                  "logging": None, "_best_ema": None, "current_epoch": 0,
                  "init_args": {"plans": plans, "configuration": CONFIGURATION, "fold": "all",
                                "dataset_json": dataset_json, "device": "cpu"},
                  "trainer_name": "nnUNetTrainer", "inference_allowed_mirroring_axes": (0, 1, 2),
                  "cps3d": {"mode": "untrained", "n_networks": 1, "seed": seed}}
    with atomic_path(ckpt_path) as tmp:
        torch.save(checkpoint, tmp)
    return model_dir


def _plan_config(size: dict[str, Any]):
    from cps3d.planning import PlanConfig

    return PlanConfig(configurations=(CONFIGURATION,), patch_size=tuple(size["patch"]), n_stages=size["n_stages"],
                      base_features=size["base_features"], max_features=size["max_features"],
                      batch_size=size["batch"])


def ensure_model(args: argparse.Namespace, scans: dict[str, dict]) -> tuple[Path, tuple, dict]:
    """The model all variants use: (model folder, folds, description for the report)."""
    from cps3d.planning import configuration_summary

    work: Path = args.work_dir
    if args.model is not None:
        from cps3d.inference.model import load_model

        m = load_model(args.model, args.folds or None)
        return args.model, tuple(m.folds), {"kind": "given", "folder": str(args.model), "trained": True,
                                            "plan": configuration_summary(m.plans, m.configuration),
                                            "trainer": m.trainer_name, "mode": m.mode}
    if args.paper_size:
        size = _paper_size()
        folder = work / "paper_plan" / "raw" / f"Dataset{PAPER_PLAN_DATASET[0]:03d}_{PAPER_PLAN_DATASET[1]}"
        missing = [k for k in PAPER_PLAN_KINDS if k not in scans]
        if missing:
            scans = {**scans, **ensure_scans(work, missing, args.seed, args.num_processes)}
        for k in PAPER_PLAN_KINDS:
            _link_or_copy(Path(scans[k]["image"]), folder / "imagesTr" / f"{k}_0000.nii.gz")
            _link_or_copy(Path(scans[k]["labels"]), folder / "labelsTr" / f"{k}.nii.gz")
        if not (folder / "dataset.json").is_file():
            _write_dataset_json(folder, len(PAPER_PLAN_KINDS))
        from cps3d.dataset import RawDataset
        from cps3d.fingerprint import FingerprintConfig, ensure_fingerprint
        from cps3d.planning import plan_experiment

        t0 = time.perf_counter()
        ds = RawDataset.load(folder)
        pre = work / "paper_plan" / "preprocessed"
        fp = ensure_fingerprint(ds, pre, FingerprintConfig(), num_processes=args.num_processes, progress=False)
        plans = plan_experiment(folder.parent, pre, ds.name, _plan_config(size), fp["cps3d"])
        _log(f"planned the paper-size network on {', '.join(PAPER_PLAN_KINDS)} in {time.perf_counter() - t0:.0f} s")
        name = f"nnUNetTrainer__{plans['plans_name']}__{CONFIGURATION}"
        model_dir = _untrained_model(work / "paper_plan" / f"model_s{args.seed}" / name, plans, ds.dataset_json,
                                     args.seed)
        return model_dir, ("all",), {"kind": "paper-size, untrained (random weights)", "trained": False,
                                     "plan": configuration_summary(plans, CONFIGURATION),
                                     "planned_on": [scans[k]["description"] for k in PAPER_PLAN_KINDS]}
    if args.tiny:
        size = MODEL_SIZES["tiny"]
        ds, pre, plans = prepare_phantom_dataset(work / "tiny_plan", "small", 2, 0, TINY_PLAN_DATASET[0],
                                                 TINY_PLAN_DATASET[1], _plan_config(size), args.num_processes,
                                                 seed=args.seed)
        name = f"nnUNetTrainer__{plans['plans_name']}__{CONFIGURATION}"
        model_dir = _untrained_model(work / "tiny_plan" / f"model_s{args.seed}" / name, plans, ds.dataset_json,
                                     args.seed)
        return model_dir, ("all",), {"kind": "tiny, untrained (random weights)", "trained": False,
                                     "plan": configuration_summary(plans, CONFIGURATION),
                                     "planned_on": "2 small phantoms"}
    return _trained_small_model(args)


def _trained_small_model(args: argparse.Namespace) -> tuple[Path, tuple, dict]:
    """The default model: small network planned on medium phantoms, trained (supervised) briefly; cached."""
    from cps3d.planning import configuration_summary
    from cps3d.preprocessing import preprocess
    from cps3d.training.config import TrainConfig
    from cps3d.training.run import model_folder, train

    size = MODEL_SIZES["small"]
    root = args.work_dir / "small_model"
    results = root / f"results_e{args.train_epochs}x{args.train_iters}_n{args.train_cases}_s{args.seed}"
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        ds, pre, plans = prepare_phantom_dataset(root / f"n{args.train_cases}", "medium", args.train_cases, 0,
                                                 SMALL_TRAIN_DATASET[0], SMALL_TRAIN_DATASET[1], _plan_config(size),
                                                 args.num_processes, seed=args.seed)
        folder = model_folder(results, ds.name, "supervised", plans["plans_name"], CONFIGURATION)
        if not (folder / "fold_all" / "checkpoint_final.pth").is_file():
            preprocess(ds, pre, plans, CONFIGURATION, num_processes=args.num_processes, progress=False)
            _log(f"training the small model ({args.train_epochs} x {args.train_iters} iterations, supervised, "
                 f"{args.device}) ...")
            config = TrainConfig(mode="supervised", epochs=args.train_epochs, iters_per_epoch=args.train_iters,
                                 val_iters=0, final_validation=False, lr_schedule="poly", seed=args.seed)
            train(ds.name, pre, results, CONFIGURATION, "all", config, device=args.device, show_progress=False,
                  overwrite=True)
            _log(f"model ready in {time.perf_counter() - t0:.0f} s")
    return folder, ("all",), {"kind": f"small, trained {args.train_epochs} x {args.train_iters} iterations "
                                      f"(supervised) on {args.train_cases} medium phantoms", "trained": True,
                              "plan": configuration_summary(plans, CONFIGURATION)}


# ------------------------------------------------------------------------------------------------------ worker
def _profile_summary(profiler, top: int = 12) -> dict:
    """Cumulative seconds of the pipeline's phases (by the functions nnU-Net and cps3d run them in) and the
    functions with the most own time, from a cProfile run."""
    import pstats

    stats = pstats.Stats(profiler)
    cum: dict[str, float] = {}
    own: list[tuple[float, str]] = []
    for (filename, line, name), (_cc, _nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        cum[name] = max(cum.get(name, 0.0), ct)
        short = "/".join(Path(filename).parts[-2:])
        own.append((tt, f"{name} ({short}:{line})"))
    phases = {
        "read image": cum.get("read_images", math.nan),
        "preprocess (crop, normalise, resample)": cum.get("run_case_npy", math.nan),
        "sliding window (network)": cum.get("predict_logits_from_preprocessed_data", math.nan),
        "export (resample to original grid, argmax)": max(cum.get("export_prediction_from_logits", 0.0),
                                                          cum.get("export_case", 0.0)) - cum.get("write_seg", 0.0),
        "write label map": cum.get("write_seg", math.nan),
        "resampling calls (preprocess + export)": cum.get("resample_data_or_seg_to_shape", math.nan),
    }
    return {"phases": phases, "own_time": [[round(t, 3), n] for t, n in sorted(own, reverse=True)[:top]]}


def worker(spec: dict) -> dict:
    """One variant on one scan in this (fresh) process."""
    threads = int(spec["threads"])
    os.environ["nnUNet_def_n_proc"] = str(threads)  # nnU-Net's torch threads (sliding window and export)
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from cps3d.inference import PRESETS
    from cps3d.inference.model import load_model
    from cps3d.inference.predictor import PredictConfig, predict

    torch.set_num_threads(threads)
    variant = BY_KEY[spec["variant"]]
    device = torch.device(spec["device"])
    cuda = device.type == "cuda"
    out = Path(spec["out_dir"])
    out.mkdir(parents=True, exist_ok=True)

    # record nnU-Net's own tiling of every sliding-window call (the wrapper only reads its result)
    tilings: list[dict] = []
    slicers_fn = nnUNetPredictor._internal_get_sliding_window_slicers

    def recording_slicers(self, image_size):
        slicers = slicers_fn(self, image_size)
        tilings.append({"padded_shape": [int(s) for s in image_size], "tiles": len(slicers)})
        return slicers

    nnUNetPredictor._internal_get_sliding_window_slicers = recording_slicers  # type: ignore[method-assign]
    folds = tuple(spec["folds"])
    rss_before = rss_mb()
    if cuda:
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats(device)
    profiler = None
    if spec.get("profile"):
        import cProfile

        profiler = cProfile.Profile()
    info: dict[str, Any] = {}
    t0 = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    if variant.impl == "stock":
        model = load_model(spec["model_dir"], folds, branch="1")
        pm = model.plans_manager
        predictor = nnUNetPredictor(tile_step_size=variant.step, use_gaussian=True, use_mirroring=variant.mirroring,
                                    perform_everything_on_device=cuda, device=device, verbose=False,
                                    verbose_preprocessing=False, allow_tqdm=False)
        predictor.manual_initialization(model.build_network(), pm, pm.get_configuration(model.configuration),
                                        model.parameters, model.dataset_json, model.trainer_name, model.mirror_axes)
        predictor.predict_from_files_sequential([[spec["scan"]]], [str(out / spec["case"])], save_probabilities=False,
                                                overwrite=True)
        mirror_axes = model.mirror_axes
        n_sets = len(model.parameters)
        seg = out / f"{spec['case']}{model.dataset_json['file_ending']}"
    else:
        config = PredictConfig(folds=folds, branch="1", ensemble_average="logits", step_size=variant.step,
                               use_mirroring=variant.mirroring, device=spec["device"],
                               forced_spacing=PRESETS[variant.forced] if variant.forced else None,
                               postprocess=False, export_mode="low_memory", resampling=variant.resampling,
                               num_processes=1, overwrite=True, progress=False)
        report = predict([spec["scan"]], out, spec["model_dir"], config)
        if not report.ok or len(report.predicted) != 1:
            raise RuntimeError(f"cps3d predict failed: {'; '.join(map(str, report.failed))}")
        r = report.predicted[0]
        info = {"network_shape": r.network_shape, "assumed_spacing": r.assumed_spacing,
                "predict_s": r.predict_seconds, "export_s": r.export_seconds}
        seg = Path(r.files[-1])
        n_sets = len(json.loads((out / "cps3d_predict.json").read_text())["model"]["parameter_sets"])
        mirror_axes = None
    if cuda:
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - t0
    if profiler is not None:
        profiler.disable()
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu = {}
    if cuda:
        gpu = {"gpu_peak_allocated_mb": torch.cuda.max_memory_allocated(device) / 2 ** 20,
               "gpu_peak_reserved_mb": torch.cuda.max_memory_reserved(device) / 2 ** 20}
    if variant.impl == "ours":  # the mirroring axes of the checkpoint, read after the measurements
        mirror_axes = load_model(spec["model_dir"], folds, branch="1").mirror_axes
    result: dict[str, Any] = {
        "variant": variant.key, "case": spec["case"], "repeat": spec["repeat"], "wall_s": wall,
        "peak_rss_mb": peak_rss, "rss_before_mb": rss_before, **gpu,
        "seg": str(seg), "tilings": tilings, "tiles": sum(t["tiles"] for t in tilings),
        "network_evaluations": sum(t["tiles"] for t in tilings)
        * (2 ** len(mirror_axes) if variant.mirroring and mirror_axes else 1),
        "parameter_sets": n_sets, **info,
    }
    if profiler is not None:
        result["profile"] = _profile_summary(profiler)
    return result


def worker_main(spec_file: str) -> int:
    spec = json.loads(Path(spec_file).read_text())
    # nnU-Net prints to stdout; the parent shows a worker's output only when it fails
    with contextlib.redirect_stdout(sys.stderr):
        result = worker(spec)
    Path(spec["result_file"]).write_text(json.dumps(result))
    return 0


# ------------------------------------------------------------------------------------------------------ DSC
def _read_labels(path: str):
    import numpy as np
    import SimpleITK as sitk

    img = sitk.ReadImage(path)
    return sitk.GetArrayFromImage(img).astype(np.uint8, copy=False), img


def dice_per_label(a, b) -> dict[int, float]:
    """The package's DSC (:func:`cps3d.evaluation.metrics.dice`) of every foreground label present in either of two
    label maps of equal shape."""
    import numpy as np

    from cps3d.evaluation.metrics import dice

    if a.shape != b.shape:
        raise ValueError(f"label maps of shapes {a.shape} and {b.shape}")
    present = np.union1d(np.unique(a), np.unique(b))
    return {int(k): dice(a == k, b == k) for k in present if k > 0}


def mean_dice(a, b, labels: set[int] | None = None) -> tuple[float, int]:
    """Mean DSC over the foreground labels present in either map (only those in ``labels`` when given) and how many
    labels that is; 1.0 over 0 labels when neither map has any (they agree; FLARE 2022's rule for two empty masks)."""
    scores = [v for k, v in dice_per_label(a, b).items() if labels is None or k in labels]
    return (sum(scores) / len(scores) if scores else 1.0), len(scores)


def compare_outputs(runs: list[dict], scans: dict[str, dict]) -> dict:
    """DSC of every (case, variant) output against variant 1's (mean over the labels present in either) and against
    the reference labels (mean over the labels variant 1 predicts, i.e. the organs the model segments at all; all
    labels present when it predicts none); also checks that each output lies on its input's grid (shape, spacing,
    origin, direction)."""
    import numpy as np
    import SimpleITK as sitk

    result: dict[str, dict] = {}
    last: dict[tuple[str, str], dict] = {}
    for r in runs:
        last[(r["case"], r["variant"])] = r
    for case in scans:
        ref_stock = last.get((case, "1"))
        stock_map = _read_labels(ref_stock["seg"])[0] if ref_stock else None
        segmented = None
        if stock_map is not None:
            segmented = {int(k) for k in np.flatnonzero(np.bincount(stock_map.ravel())) if k > 0} or None
        truth = None
        if scans[case].get("labels") and Path(scans[case]["labels"]).is_file():
            truth = _read_labels(scans[case]["labels"])[0]
        reader = sitk.ImageFileReader()
        reader.SetFileName(scans[case]["image"])
        reader.ReadImageInformation()
        geom = (reader.GetSize(), reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())
        result[case] = {}
        stock_same = last.get((case, "2"))
        for v in VARIANTS:
            r = last.get((case, v.key))
            if r is None:
                continue
            seg, img = _read_labels(r["seg"])
            if v.key in ("4", *FAST) and stock_same is not None:  # same settings as 2 (4: identical maps expected)
                other = _read_labels(stock_same["seg"])[0]
                if other.shape == seg.shape:
                    result[case][f"voxels_{v.key}_differing_from_2"] = int(np.count_nonzero(other != seg))
                    result[case][f"agreement_{v.key}_vs_2"] = float(np.count_nonzero(other == seg) / seg.size)
                    result[case][f"dsc_per_label_{v.key}_vs_2"] = {
                        str(label): d for label, d in dice_per_label(other, seg).items()}
            same_grid = (img.GetSize() == geom[0] and np.allclose(img.GetSpacing(), geom[1], atol=1e-5)
                         and np.allclose(img.GetOrigin(), geom[2], atol=1e-3)
                         and np.allclose(img.GetDirection(), geom[3], atol=1e-5))
            entry: dict[str, Any] = {"same_grid": bool(same_grid)}
            if stock_map is not None and same_grid:
                entry["dsc_vs_stock"], entry["labels_vs_stock"] = mean_dice(stock_map, seg)
            if truth is not None and same_grid and truth.shape == seg.shape:
                entry["dsc_vs_reference"], entry["labels_vs_reference"] = mean_dice(truth, seg, segmented)
                entry["dsc_per_label_vs_reference"] = {str(k): v for k, v in dice_per_label(truth, seg).items()}
            entry["labels_predicted"] = int(np.count_nonzero(np.bincount(seg.ravel())[1:]))
            result[case][v.key] = entry
    return result


# ------------------------------------------------------------------------------------------------------ report
def _scan_line(case: str, geometry: dict) -> str:
    size = " x ".join(map(str, geometry["size"]))
    spacing = " x ".join(f"{s:.3g}" for s in geometry["spacing"])
    return f"{size} voxels at {spacing} mm"


def report(result: dict) -> str:
    """The Markdown tables of one benchmark result (as written to --json)."""
    s = result["settings"]
    runs = result["runs"]
    scans = result["scans"]
    dsc = result.get("dsc", {})
    on_gpu = s["device"].startswith("cuda")
    model = result["model"]
    plan = model["plan"]
    variants = [BY_KEY[k] for k in s["variants"]]
    by = {(c, v.key): [r for r in runs if r["case"] == c and r["variant"] == v.key] for c in scans for v in variants}

    def med(case: str, key: str, field: str) -> float:
        vals = [r[field] for r in by[(case, key)] if r.get(field) is not None]
        return median(vals)

    lines = [f"## Inference: cps3d predict vs stock nnU-Net ({s['device']})", "",
             f"Measured {machine_line(result['machine'])}; {s['threads']} torch thread(s) per process. {NOISE_NOTE}",
             "",
             f"Model: {model['kind']}; plan: patch {'x'.join(map(str, plan['patch_size']))}, {plan['n_stages']} "
             f"stages, features {plan['features_per_stage']}, spacing "
             f"{' x '.join(f'{x:.3g}' for x in plan['spacing'])} mm (z, y, x); "
             + ("weights trained." if model["trained"] else
                "UNTRAINED weights: DSC values only show whether two variants agree, not accuracy.") +
             f" Network 1, fold {', '.join(map(str, s['folds']))}. {s['repeats']} alternating run(s) per variant and "
             f"case ({s['v1_repeats']} of variant 1), each in a fresh process; medians. cps3d runs with "
             "post-processing OFF (stock nnU-Net has none) and its default low-memory export. Time: model loading, "
             "reading, preprocessing, sliding window, export and writing of one scan; peak RSS: the whole process "
             "(torch, nnU-Net and the model included). DSC vs 1: mean over the labels present in either map; DSC "
             "vs the reference labels: mean over the labels that variant 1 predicts (the organs the model segments at "
             "all).", "",
             "Variants: " + "; ".join(f"**{v.key}** {v.name}" for v in variants) + ".", ""]
    for case, scan in scans.items():
        lines += [f"### {case}: {scan['description']}, {_scan_line(case, scan['geometry'])}", ""]
        header = ["variant", "time [s] median (range)", "peak RSS [MB]"]
        if on_gpu:
            header.append("peak GPU alloc. [MB]")
        header += ["network input, padded (z, y, x)", "tiles", "network evals", "DSC vs 1",
                   f"DSC vs {scan['labels_kind']}", "labels predicted"]
        rows = []
        for v in variants:
            rs = by[(case, v.key)]
            if not rs:
                continue
            t = [r["wall_s"] for r in rs]
            cells = [f"{v.key}. {v.name}", f"{median(t):.2f} ({min(t):.2f}-{max(t):.2f})",
                     f"{med(case, v.key, 'peak_rss_mb'):,.0f}"]
            if on_gpu:
                cells.append(f"{med(case, v.key, 'gpu_peak_allocated_mb'):,.0f}")
            shapes = {tuple(tl["padded_shape"]) for r in rs for tl in r["tilings"]}
            d = dsc.get(case, {}).get(v.key, {})
            grid_note = "" if d.get("same_grid", True) else " (NOT on the input grid)"
            cells += [" / ".join("x".join(map(str, sh)) for sh in sorted(shapes)) or "n/a",
                      f"{med(case, v.key, 'tiles'):.0f}", f"{med(case, v.key, 'network_evaluations'):.0f}",
                      ("ref." if v.key == "1" else _dsc(d, "stock")) + grid_note, _dsc(d, "reference"),
                      str(d.get("labels_predicted", "n/a"))]
            rows.append(cells)
        lines += [markdown_table(header, rows), ""]
        profiles = [(v, r["profile"]) for v in variants for r in by[(case, v.key)] if "profile" in r]
        if profiles:
            names = list(profiles[0][1]["phases"])
            prows = [[n] + [fmt(p["phases"].get(n), 3) for _, p in profiles] for n in names]
            lines += ["Where the time goes (cProfile, cumulative seconds of one extra run per variant; profiling "
                      "adds overhead):", "",
                      markdown_table(["phase"] + [f"{v.key}." for v, _ in profiles], prows), ""]
    # ratios against the targets
    have = {v.key for v in variants}
    rows = []
    for case in scans:
        def tmed(k: str, case: str = case) -> float:
            return med(case, k, "wall_s")

        if {"2", "4"} <= have:
            q = ratio(tmed("4"), tmed("2"))
            rows.append([case, "time 4 / 2 (ours vs stock, same settings)", f"{q:.3f}", f"<= {TARGET_SAME_TIME}",
                         _met(q <= TARGET_SAME_TIME)])
            differing = dsc.get(case, {}).get("voxels_4_differing_from_2")
            rows.append([case, "label maps 4 vs 2: voxels that differ (check)", "n/a" if differing is None
                         else f"{differing:,}", "0", "n/a" if differing is None else _met(differing == 0)])
            q = ratio(med(case, "4", "peak_rss_mb"), med(case, "2", "peak_rss_mb"))
            rows.append([case, "peak RSS 4 / 2", f"{q:.3f}", f"<= {TARGET_SAME_RSS:.2f}",
                         _met(q <= TARGET_SAME_RSS) if q <= TARGET_SAME_RSS or q > TARGET_SAME_RSS + RSS_NOISE
                         else "within noise"])
            if on_gpu:
                q = ratio(med(case, "4", "gpu_peak_allocated_mb"), med(case, "2", "gpu_peak_allocated_mb"))
                rows.append([case, "peak GPU memory 4 / 2", f"{q:.3f}", "(no target)", ""])
        for f in FAST:
            if {"2", f} <= have:
                rows += _fast_rows(case, f, have, dsc.get(case, {}), tmed, med, on_gpu)
        if {"1", "3"} <= have:
            q = ratio(tmed("3"), tmed("1"))
            rows.append([case, "time 3 / 1 (paper protocol vs stock defaults)", f"{q:.3f}",
                         f"<= {TARGET_PROTOCOL_TIME}", _met(q <= TARGET_PROTOCOL_TIME)])
            if on_gpu:
                q = ratio(med(case, "3", "gpu_peak_allocated_mb"), med(case, "1", "gpu_peak_allocated_mb"))
                rows.append([case, "peak GPU memory 3 / 1", f"{q:.3f}", "(no target)", ""])
    if rows:
        lines += ["### Ratios against the targets", "",
                  markdown_table(["case", "ratio (medians)", "measured", "target", "met"], rows,
                                 right=[False, False, True, True, False]), ""]
    if {"3", "4"} <= have:
        rows = []
        for case, scan in scans.items():
            d = dsc.get(case, {})
            on, off = d.get("3", {}), d.get("4", {})
            ev3, ev4 = med(case, "3", "network_evaluations"), med(case, "4", "network_evaluations")
            vox = [math.prod(r["network_shape"]) for k in ("3", "4") for r in by[(case, k)][:1]
                   if r.get("network_shape")]
            rows.append([case, _scan_line(case, scan["geometry"]),
                         f"{ratio(vox[1], vox[0]):.2f}x" if len(vox) == 2 else "n/a",
                         f"{ev4:.0f} -> {ev3:.0f}",
                         f"{ratio(med(case, '4', 'wall_s'), med(case, '3', 'wall_s')):.2f}x",
                         _dsc(off, "stock"), _dsc(on, "stock"),
                         _diff(off.get("dsc_vs_stock"), on.get("dsc_vs_stock")),
                         _diff(off.get("dsc_vs_reference"), on.get("dsc_vs_reference"))])
        lines += ["### Forced spacing (paper preset) per scan kind: what it saves and what it costs", "",
                  markdown_table(["case", "scan", "network voxels off / paper", "tiles off -> paper",
                                  "speed-up (time 4 / 3)", "DSC vs 1, off (4)", "DSC vs 1, paper (3)",
                                  "DSC cost vs 1 (4 - 3)", "DSC cost vs reference (4 - 3)"], rows), ""]
        if not model["trained"]:
            lines += ["The weights are untrained: the DSC costs above say nothing about accuracy.", ""]
    lines += [f"Total benchmark time {result['total_s']:.0f} s" + ("" if math.isnan(result["prepare_s"]) else
              f" (model and scans ready before it: {result['prepare_s']:.0f} s)") + "."]
    return "\n".join(lines)


def _fast_rows(case: str, f: str, have: set[str], d: dict, tmed, med, on_gpu: bool) -> list[list[str]]:
    """Ratio rows of torch variant ``f`` (5 or 6) against stock with the same settings (2): time, peak RSS,
    agreement of the label maps (voxels, every organ's DSC) and, on CUDA, GPU memory and seconds per case."""
    name = BY_KEY[f].resampling
    rows = []
    q = ratio(tmed(f), tmed("2"))
    rows.append([case, f"time {f} / 2 ({name} vs stock, same settings)", f"{q:.3f}", f"<= {TARGET_FAST_RATIO}",
                 _met(q <= TARGET_FAST_RATIO)])
    q = ratio(med(case, f, "peak_rss_mb"), med(case, "2", "peak_rss_mb"))
    rows.append([case, f"peak RSS {f} / 2", f"{q:.3f}", f"<= {TARGET_FAST_RATIO}", _met(q <= TARGET_FAST_RATIO)])
    if "4" in have:
        q = ratio(tmed(f), tmed("4"))
        rows.append([case, f"time {f} / 4 ({name} vs exact path)", f"{q:.3f}", "(no target)", ""])
    agree = d.get(f"agreement_{f}_vs_2")
    rows.append([case, f"label maps {f} vs 2: voxels that agree", "n/a" if agree is None else f"{agree:.5f}",
                 f">= {TARGET_FAST_AGREEMENT}", "n/a" if agree is None else _met(agree >= TARGET_FAST_AGREEMENT)])
    organs = d.get(f"dsc_per_label_{f}_vs_2") or {}
    if organs:
        worst = min(organs, key=lambda k: organs[k])
        every = ", ".join(f"{k}: {organs[k]:.4f}" for k in sorted(organs, key=int))
        rows.append([case, f"label maps {f} vs 2: every organ's DSC ({every})", f"{organs[worst]:.4f} (lowest, label "
                     f"{worst})", f">= {TARGET_FAST_DSC}", _met(organs[worst] >= TARGET_FAST_DSC)])
    if on_gpu:
        q = ratio(med(case, f, "gpu_peak_allocated_mb"), med(case, "2", "gpu_peak_allocated_mb"))
        rows.append([case, f"peak GPU memory {f} / 2", f"{q:.3f}", "(no target)", ""])
        seconds, mb = tmed(f), med(case, f, "gpu_peak_allocated_mb")
        rows.append([case, f"{name}: seconds per case (FLARE 2022 winner: 14.6 s)", f"{seconds:.2f}",
                     f"<= {TARGET_GPU_SECONDS:g}", _met(seconds <= TARGET_GPU_SECONDS)])
        rows.append([case, f"{name}: peak GPU memory allocated [MB]", f"{mb:.0f}", f"<= {TARGET_GPU_MB}",
                     _met(mb <= TARGET_GPU_MB)])
    return rows


def _dsc(entry: dict, against: str) -> str:
    """A DSC cell: the mean, with '(both empty)' when neither map had a foreground label."""
    value = entry.get(f"dsc_vs_{against}")
    if value is None:
        return "n/a"
    return f"{value:.4f}" + (" (both empty)" if entry.get(f"labels_vs_{against}") == 0 else "")


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _diff(a: float | None, b: float | None) -> str:
    if a is None or b is None or math.isnan(a) or math.isnan(b):
        return "n/a"
    return f"{a - b:+.4f}"


# ------------------------------------------------------------------------------------------------------ main
def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--cases", nargs="+", choices=CASES, help="scans to predict (default: thin thick real; "
                   "--tiny: small real)")
    p.add_argument("--variants", nargs="+", choices=[v.key for v in VARIANTS], default=[v.key for v in VARIANTS],
                   help="variants to run (default: all six)")
    p.add_argument("--repeats", type=int, help="alternating runs per variant and case (default 2; --tiny: 1)")
    p.add_argument("--v1-repeats", type=int, default=1,
                   help="runs of variant 1 (stock defaults: 8 mirrorings, by far the slowest; its ratio target, 0.2, "
                        "is far from noise) per case (default 1; at most --repeats)")
    p.add_argument("--no-warmup", dest="warmup", action="store_false",
                   help="skip the untimed warm-up run (and reading the scans once into the file cache)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--paper-size", action="store_true",
                      help="the paper's 3D network (patch 112x160x128, 6 stages, 32-320 features) planned on full-size "
                           "phantoms, untrained: meant for a GPU")
    size.add_argument("--tiny", action="store_true", help="tiny untrained network and small scans: a smoke test")
    size.add_argument("--model", type=Path, help="an existing trained model folder instead")
    p.add_argument("--folds", nargs="+", help="folds of --model (default: all fold_N it has)")
    p.add_argument("--train-epochs", type=int, default=12, help="default model: epochs (default 12)")
    p.add_argument("--train-iters", type=int, default=50, help="default model: iterations per epoch (default 50)")
    p.add_argument("--train-cases", type=int, default=8, help="default model: medium phantoms to train on (default 8)")
    p.add_argument("--threads", type=int, help="torch threads per process (default: 1 on CPU, where a shared "
                   "machine's other jobs make multi-threaded timings erratic; min(8, cores) on CUDA)")
    p.add_argument("--num-processes", type=int, default=min(2, os.cpu_count() or 1),
                   help="processes for rendering phantoms, fingerprint and preprocessing of the training data")
    p.add_argument("--profile", action="store_true",
                   help="one more run per case and variant under cProfile: where the time goes")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/cps3d_bench_inference"),
                   help="scans, models and outputs, reused by later runs (default /tmp/cps3d_bench_inference)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=1800, help="seconds allowed per worker process (default 1800)")
    p.add_argument("--json", type=Path, help="write the raw results and settings here")
    p.add_argument("--report", type=Path, metavar="JSON", help="print the tables of an earlier --json result and stop "
                   "(of a run stopped early: of its complete repeats)")
    args = p.parse_args(argv)
    if args.report is not None:
        return args
    if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
        p.error(f"--device {args.device!r}: use cpu or cuda")
    if args.folds and args.model is None:
        p.error("--folds needs --model")
    if args.cases is None:
        args.cases = ["small", "real"] if args.tiny else ["thin", "thick", "real"]
    args.cases = list(dict.fromkeys(args.cases))
    args.variants = [v.key for v in VARIANTS if v.key in set(args.variants)]
    if args.repeats is None:
        args.repeats = 1 if args.tiny else 2
    if args.threads is None:
        args.threads = 1 if args.device == "cpu" else min(8, os.cpu_count() or 1)
    args.v1_repeats = min(args.v1_repeats, args.repeats)
    for key in ("repeats", "v1_repeats", "threads", "num_processes", "train_epochs", "train_iters", "train_cases"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be at least 1, got {getattr(args, key)}")
    if args.model is not None and not args.model.is_dir():
        p.error(f"--model {args.model}: folder not found")
    return args


def _geometry(path: str) -> dict:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    return {"size": list(reader.GetSize()), "spacing": list(reader.GetSpacing())}


def _complete_repeats(result: dict) -> dict | None:
    """The result of a run stopped before its end (its JSON holds every finished run), cut to the repeats in which
    every variant ran on every case, compared from the label maps the runs left in the work folder (each variant's
    map is the same in every repeat); None if no repeat is complete."""
    s = result["settings"]
    done = 0
    while done < s["repeats"]:
        needed = {(c, k) for c in result["scans"] for k in s["variants"] if k != "1" or done < s["v1_repeats"]}
        if not needed <= {(r["case"], r["variant"]) for r in result["runs"] if r["repeat"] == done}:
            break
        done += 1
    if done == 0:
        return None
    runs = [r for r in result["runs"] if 0 <= r["repeat"] < done]
    _log(f"{s['repeats']} repeat(s) asked for, {done} complete: the tables give those")
    return {**result, "runs": runs, "settings": {**s, "repeats": done, "v1_repeats": min(s["v1_repeats"], done)},
            "dsc": compare_outputs(runs, result["scans"]), "total_s": sum(r["wall_s"] for r in runs),
            "prepare_s": math.nan}


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) == 3 and sys.argv[1] == "--worker":
        return worker_main(sys.argv[2])
    args = parse_args(argv)
    if args.report is not None:
        result = json.loads(args.report.read_text())
        if "dsc" not in result:  # a run stopped early: the tables of its complete repeats
            result = _complete_repeats(result)
            if result is None:
                print(f"error: {args.report} holds no complete repeat", file=sys.stderr)
                return 2
        print(report(result))
        return 0
    os.environ.setdefault("nnUNet_n_proc_DA", "0")
    os.environ.setdefault("nnUNet_compile", "false")
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda was asked for but torch sees no CUDA device", file=sys.stderr)
        return 2
    if args.device == "cpu":
        torch.set_num_threads(args.threads)  # training of the default model, here
    info = machine_info(args.device)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    scans = ensure_scans(args.work_dir, args.cases, args.seed, args.num_processes)
    model_dir, folds, model_info = ensure_model(args, scans)
    for case in scans:
        scans[case]["geometry"] = _geometry(scans[case]["image"])
    prepare_s = time.perf_counter() - t_start
    _log(f"model {model_dir} (folds {folds}); scans: " + "; ".join(
        f"{c} {_scan_line(c, s['geometry'])}" for c, s in scans.items()))

    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "json"}
    settings["folds"] = list(folds)
    env = {"nnUNet_n_proc_DA": "0", "nnUNet_compile": "false", "nnUNet_def_n_proc": str(args.threads)}
    runs: list[dict] = []
    t_bench = time.perf_counter()

    def spec(case: str, key: str, repeat: int, profile: bool = False) -> dict:
        return {"variant": key, "case": case, "repeat": repeat, "scan": scans[case]["image"],
                "model_dir": str(model_dir), "folds": list(folds), "device": args.device, "threads": args.threads,
                "out_dir": str(args.work_dir / "out" / f"variant_{key}"), "profile": profile}

    def save(complete: bool, extra: dict | None = None) -> dict:
        payload = {"benchmark": "inference", "complete": complete, "machine": info, "settings": settings,
                   "model": model_info, "scans": scans, "runs": runs, **(extra or {})}
        if args.json:
            save_json(args.json, payload)
        return payload

    if args.warmup:
        # file cache and imports: the first run of a session must not be the only one paying for them
        for case in args.cases:
            with open(scans[case]["image"], "rb") as f:
                while f.read(1 << 24):
                    pass
        # imports, CUDA and the model: one untimed run on the small shipped CT, whatever the cases
        t0 = time.perf_counter()
        run_worker(Path(__file__), {**spec(args.cases[0], args.variants[-1], -1), "case": "warmup",
                                    "scan": str(REAL_CT), "out_dir": str(args.work_dir / "out_warmup")},
                   args.timeout, env)
        _log(f"warm-up run (real CT, variant {args.variants[-1]}, not counted): {time.perf_counter() - t0:.0f} s")
    for r in range(args.repeats):
        for case in args.cases:
            order = args.variants[r % len(args.variants):] + args.variants[:r % len(args.variants)]
            for key in order:
                if key == "1" and r >= args.v1_repeats:
                    continue
                res = run_worker(Path(__file__), spec(case, key, r), args.timeout, env)
                runs.append(res)
                save(False)
                extra = f", GPU {res['gpu_peak_allocated_mb']:.0f} MB" if "gpu_peak_allocated_mb" in res else ""
                _log(f"repeat {r + 1}/{args.repeats} {case} variant {key}: {res['wall_s']:.2f} s, peak RSS "
                     f"{res['peak_rss_mb']:.0f} MB{extra}, {res['tiles']} tiles")
    if args.profile:
        for case in args.cases:
            for key in args.variants:
                res = run_worker(Path(__file__), {**spec(case, key, -1, True),
                                                  "out_dir": str(args.work_dir / "out_profile" / f"variant_{key}")},
                                 args.timeout, env)
                runs.append(res)
                _log(f"profiled {case} variant {key}: {res['profile']['phases']}")
    timed = [r for r in runs if r["repeat"] >= 0]
    _log("comparing outputs (DSC) ...")
    dsc = compare_outputs(timed, scans)
    profiled = {(r["case"], r["variant"]): r["profile"] for r in runs if r["repeat"] < 0}
    for r in timed:  # show each profile once, beside the timed runs of its case and variant
        if r["repeat"] == 0 and (r["case"], r["variant"]) in profiled:
            r["profile"] = profiled[(r["case"], r["variant"])]
    runs[:] = timed
    result = save(False, {"dsc": dsc, "total_s": time.perf_counter() - t_bench, "prepare_s": prepare_s})
    result["complete"] = True
    publish(result, report(result), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
