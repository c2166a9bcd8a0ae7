"""``cps3d demo``: the whole system end to end on synthetic abdominal phantoms, within a time budget.

Steps (each recorded in ``<workdir>/demo_state.json`` with its settings, so a second run reuses what is done and redoes
only what a changed setting affects):

1. phantoms: a few labeled, many more unlabeled, and a held-out labeled test set;
2. ``check``, the body-intensity fingerprint, the 2D plan, preprocessing of labeled and unlabeled;
3. CPS and the supervised baseline, trained for the same number of iterations on the same labeled data (fold "all":
   every labeled case trains; the test set is held out), as many as the budget allows at the measured speed;
4. predictions of the test scans with step 0.7 and no TTA for both models, and for CPS also with the paper's forced
   spacing, each under the efficiency profiler;
5. FLARE-rule evaluation and ``report.md`` with the tables and figures.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np

from cps3d.files import json_digest, read_json, write_json
from cps3d.planning import DEFAULT_PLANS_NAME

if TYPE_CHECKING:
    from cps3d.evaluation.summary import EvaluationResult, EvaluationSummary
    from cps3d.inference.forced_spacing import ForcedSpacing

log = logging.getLogger(__name__)

DATASET_ID = 900
DATASET_NAME = "Dataset900_Phantoms"
RUNS = ("Baseline", "CPS", "CPS + forced spacing")

# The demo's protocol: what we measured to learn fastest on a CPU (benchmarks/ssl_gain.py, validation phantoms; the
# README's "Evidence" section). It differs from the paper's, and the report says how and why.
CONFIGURATION = "2d"  # the paper trains 2D too; on a CPU a 2D step on a whole small slice is cheap
INTENSITY = "body"  # global statistics are dominated by air: organ contrast shrinks 3x and learning slows 2x
# the optimizer for minutes, not days: nnU-Net's momentum 0.99 averages over ~100 steps, too slow to follow in a few
# hundred; lr 0.1 with momentum 0.9 takes the same effective step (lr / (1 - momentum) = 1) and reacts 10x faster
SHORT_RUN_OPTIMIZER = {"initial_lr": 0.1, "momentum": 0.9}
# and the learning rate falling linearly to 0 over the last 30 % of each run (CPS: of its time; the baseline: of its
# epochs): at a constant 0.1 the last weights are a noisy iterate, 100 iterations more or less moved the mean DSC by
# 0.02-0.03. Chosen on 20 validation phantoms, 3 seeds at 1000 iterations (benchmarks/README.md, "The final decay")
FINAL_DECAY = 0.3
# the cross terms: the paper's (Dice+CE against the other network's argmax on every voxel, TrainConfig's defaults).
# Cross-entropy on confident pseudo-labels (the benchmark's ``cps``) was the demo's until 7 seeds on 20 validation
# phantoms chose the paper's (+0.013 mean DSC over it; benchmarks/README.md, "Seven seeds")
CPS_OBJECTIVE = {"cps_loss": "dice_ce", "confidence": 0.0}
# what the schedule keeps for the steps after training, on top of the time already spent when it is made (phantoms,
# preprocessing, the step measurement: measured, not guessed). Predicting: one network pass per sliding window
# (:func:`sliding_windows`, counted on the test scans), each costing WINDOW_COST bare batch-1 forward passes as the
# calibration measures them (the predictor's padding, accumulation and export on top: 0.84-1.37 measured on demo
# seeds 0 and 2, 8-11 ms per window for either; 1.3 kept). At these sizes a pass costs about the same whatever the
# patch, so the windows decide, not the training step: demo seed 2's smaller patch has 40 % more windows than seed 0
# and a faster step, and its prediction took twice the reserve that 14 training steps per scan had kept. Scoring:
# about 0.6 supervised step per scan and run measured, 2 kept
WINDOW_COST = 1.3
EVALUATION_STEPS_PER_CASE = 2
# and a share of the budget for what the schedule cannot know: CPS stops after the epoch in which its time is up (a
# twentieth of its training or more), and the baseline then trains as many iterations as CPS completed, at a speed
# estimated from the measured step (on 2 cores they took 26 s and 11 s more than planned; on demo seed 2 the
# baseline's data loading, which does not shrink with the patch, 46 s more)
MARGIN_SHARE = 0.08


class StepSeconds(TypedDict):
    """Measured seconds of one training iteration of each method, and of one sliding window's forward pass."""

    supervised: float
    cps: float
    window: float


class TrainingSchedule(TypedDict):
    """The demo's training schedule (:func:`training_schedule`), kept as JSON in the demo's state file."""

    max_epochs: int
    expected_epochs: int
    iters_per_epoch: int
    val_iters: int
    cps_minutes: float
    lambda_start_epoch: int
    lambda_ramp_epochs: int
    seconds_per_iteration: StepSeconds
    prediction_windows: int


def training_schedule(minutes: float, device: str, t_sup: float, t_cps: float, windows: int = 0,
                      t_window: float = 0.0, scored: int = 0, elapsed_minutes: float = 0.0) -> TrainingSchedule:
    """The demo's training schedule for a budget of ``minutes`` and measured seconds per iteration (supervised, CPS).

    Training gets the budget less what is already spent (``elapsed_minutes``), a margin (``MARGIN_SHARE`` of the
    budget), the prediction of the test scans (``windows`` sliding windows over all runs, ``WINDOW_COST`` measured
    forward passes of ``t_window`` seconds each) and their scoring (``EVALUATION_STEPS_PER_CASE`` supervised steps
    for each of the ``scored`` scans x runs), with half a minute at least.
    CPS and the baseline train for the same number of iterations, so CPS's share of the training time is
    ``t_cps / (t_cps + t_sup)``; the iterations expected in it (a data-loading overhead on top of the step) size the
    epochs (10-50 iterations each), and lambda rises from 0 to 0.5 over the first half of the expected epochs (the
    paper's schedule, scaled to the run). The clock stops the training (``cps_minutes``); the epoch cap only guards
    against a wildly wrong measurement.
    """
    after_minutes = (windows * WINDOW_COST * t_window + scored * EVALUATION_STEPS_PER_CASE * t_sup) / 60
    train_minutes = max(0.5, (1 - MARGIN_SHARE) * minutes - elapsed_minutes - after_minutes)
    # data loading (augmentation in the training process) and validation on top of the step: measured on one CPU
    # core, a CPS iteration took about the calibrated step, a supervised one 1.25-1.4x it (one batch to load for a
    # quarter of the network work)
    cps_cost, sup_cost = (1.0 * t_cps, 1.4 * t_sup) if device == "cpu" else (1.5 * t_cps, 2.0 * t_sup)
    cps_minutes = train_minutes * cps_cost / (cps_cost + sup_cost)
    expected = max(4, int(60 * cps_minutes / cps_cost))
    iters_per_epoch = int(np.clip(expected // 20, 10, 50))
    epochs = max(2, expected // iters_per_epoch)
    return {"max_epochs": 100 * epochs, "expected_epochs": epochs, "iters_per_epoch": iters_per_epoch,
            "val_iters": 2, "cps_minutes": cps_minutes, "lambda_start_epoch": 0,
            "lambda_ramp_epochs": max(1, epochs // 2),
            "seconds_per_iteration": {"supervised": t_sup, "cps": t_cps, "window": t_window},
            "prediction_windows": windows}


def sliding_windows(images: Sequence[str | os.PathLike], plans: dict, configuration: str,
                    forced_spacing: ForcedSpacing | None = None, step: float = 0.7) -> int:
    """How many sliding windows (network passes at batch 1) predicting ``images`` with ``configuration`` of
    ``plans`` takes, with the paper's step and no mirroring: nnU-Net's windows over each scan resampled to the plan's
    spacing (its own, or ``forced_spacing``'s assumed one) and padded to the patch; a 2D configuration runs them on
    every slice. Reads the images (the demo's test scans are small); nnU-Net's crop to the nonzero region is left out,
    so scans with a zero border count a few windows too many."""
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from cps3d.inference.forced_spacing import force_spacing_on_properties

    pm = PlansManager(plans)
    cm = pm.get_configuration(configuration)
    patch = [int(p) for p in cm.patch_size]
    reader = pm.image_reader_writer_class()
    total = 0
    for path in images:
        image, properties = reader.read_images([str(path)])
        shape = image.shape[1:]
        if forced_spacing is not None:
            force_spacing_on_properties(properties, shape, forced_spacing)
        shape = [shape[a] for a in pm.transpose_forward]
        spacing = [float(properties["spacing"][a]) for a in pm.transpose_forward]
        target = [*spacing[:len(shape) - len(cm.spacing)], *cm.spacing]  # 2D keeps the slice spacing
        new = [int(n) for n in compute_new_shape(shape, spacing, target)]  # nnU-Net's preprocessing shape
        leading, inner = new[:len(new) - len(patch)], [max(n, p) for n, p in zip(new[len(new) - len(patch):], patch)]
        steps = compute_steps_for_sliding_window(tuple(inner), tuple(patch), step)
        total += int(np.prod(leading)) * int(np.prod([len(s) for s in steps]))
    return total


@dataclass(frozen=True)
class DemoConfig:
    """The demo's settings. ``minutes`` is the wall-clock budget of the whole run (2 CPU cores by default); the
    training share and the network/patch size scale with it. ``device``: cpu, cuda or None (CUDA when available)."""

    workdir: str = "cps3d_demo"
    minutes: float = 15.0
    device: str | None = None
    # 2 labeled cases, where labels limit and CPS helped in the evidence benchmark (not with 5); 20 test phantoms,
    # because 4 could not resolve a difference of 0.02 mean DSC there (benchmarks/README.md, "Evidence")
    labeled: int = 2
    unlabeled: int = 20
    test: int = 20
    size: str = "small"
    seed: int = 0
    num_processes: int = 2
    progress: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.minutes) and self.minutes >= 1):
            raise ValueError(f"minutes={self.minutes}: the demo needs at least 1 minute")
        if self.labeled < 2 or self.unlabeled < 1 or self.test < 1:
            raise ValueError("the demo needs at least 2 labeled, 1 unlabeled and 1 test case")
        if self.device not in (None, "cpu", "cuda"):
            raise ValueError(f"device={self.device!r}: choose cpu or cuda")
        if self.num_processes < 1:
            raise ValueError(f"num_processes={self.num_processes}: must be at least 1")


class _State:
    """Which steps are done, with the settings they were done with."""

    def __init__(self, path: Path):
        self.path = path
        self.steps: dict = read_json(path)["steps"] if path.is_file() else {}

    @staticmethod
    def key(settings: dict) -> str:
        return json_digest(settings)[:16]

    def done(self, step: str, settings: dict) -> bool:
        return self.steps.get(step, {}).get("key") == self.key(settings)

    def record(self, step: str, settings: dict, **info) -> None:
        self.steps[step] = {"key": self.key(settings), "settings": settings, **info}
        write_json(self.path, {"steps": self.steps})

    def info(self, step: str) -> dict:
        return self.steps[step]


class Demo:
    def __init__(self, config: DemoConfig):
        self.c = config
        self.work = Path(config.workdir).expanduser().resolve()
        self.raw, self.pre, self.res = self.work / "raw", self.work / "preprocessed", self.work / "results"
        self.work.mkdir(parents=True, exist_ok=True)
        self.state = _State(self.work / "demo_state.json")
        self.t0 = time.monotonic()

    # --------------------------------------------------------------------------------------------------- helpers
    def _step(self, n: int, text: str) -> None:
        log.info("[demo %5.0f s] step %d: %s", time.monotonic() - self.t0, n, text)

    @property
    def device(self) -> str:
        from cps3d.devices import resolve_device

        return self.c.device or str(resolve_device(None))

    # ------------------------------------------------------------------------------------------------- the steps
    def data(self):
        from cps3d.dataset import RawDataset, ensure_checked
        from cps3d.phantoms import write_dataset

        settings = {k: getattr(self.c, k) for k in ("labeled", "unlabeled", "test", "size", "seed")}
        self._step(1, f"synthetic phantoms ({self.c.labeled} labeled, {self.c.unlabeled} unlabeled, {self.c.test} test, "
                      f"size {self.c.size})")
        folder = self.raw / DATASET_NAME
        if not self.state.done("phantoms", settings):
            folder = write_dataset(self.raw, self.c.labeled, self.c.unlabeled, self.c.test, seed=self.c.seed,
                                   size=self.c.size, dataset_id=DATASET_ID, name="Phantoms",
                                   num_processes=self.c.num_processes, progress=self.c.progress,
                                   overwrite=folder.exists())
            self.state.record("phantoms", settings)
        ds = RawDataset.load(folder)
        self._step(2, f"dataset check, {INTENSITY}-intensity fingerprint, {CONFIGURATION} plan, preprocessing")
        ensure_checked(ds, self.pre / ds.name, self.c.num_processes, self.c.progress)
        return ds

    def plan_and_preprocess(self, ds) -> dict:
        from cps3d.fingerprint import FingerprintConfig, ensure_fingerprint
        from cps3d.planning import PlanConfig, plan_experiment
        from cps3d.preprocessing import preprocess

        fp = ensure_fingerprint(ds, self.pre, FingerprintConfig(INTENSITY), self.c.num_processes, self.c.progress)
        # nnU-Net's 2D plan (the whole slice as the patch) with a small network; on a CPU a batch of 4 + 4 slices
        # (a step a third as long as the paper's 12 + 12, which learns as much per second), on a GPU the paper's 12 + 12
        batch = 4 if self.device == "cpu" else 12
        plan = PlanConfig(configurations=(CONFIGURATION,), base_features=16, max_features=128, batch_size=batch)
        settings = {"plan": asdict(plan), "fingerprint": fp["cps3d"]["content_key"]}
        if not self.state.done("plan", settings):
            plan_experiment(self.raw, self.pre, ds.name, plan, fp["cps3d"])
            self.state.record("plan", settings)
        from cps3d.planning import load_plans

        plans = load_plans(self.pre, ds.name)
        preprocess(ds, self.pre, plans, CONFIGURATION, self.c.num_processes, self.c.progress)
        return plans

    def _measure_steps(self, plans: dict) -> StepSeconds:
        """Measured seconds of one supervised and one CPS network step (forward, loss, backward, step) on random
        batches of the plan's shape, and of one prediction window (network 1 of the supervised trainer, batch 1,
        evaluation mode, no deep supervision); data loading and the predictor's work come on top and are accounted
        for by the caller."""
        import shutil
        import tempfile

        import torch

        from cps3d.training.config import TrainConfig
        from cps3d.training.run import build_trainer

        def median_seconds(fn, arg, repeats: int) -> float:
            samples = []
            for i in range(repeats + 1):
                start = time.perf_counter()
                fn(arg)
                if self.device == "cuda":
                    torch.cuda.synchronize()
                if i > 0:  # the first one warms up
                    samples.append(time.perf_counter() - start)
            return float(np.median(samples))

        times = {}
        scratch = tempfile.mkdtemp(prefix="calibration_", dir=self.work)  # nnU-Net's trainer makes a log folder
        for mode in ("supervised", "cps"):
            config = TrainConfig(mode=mode, epochs=1, iters_per_epoch=1, val_iters=0, final_validation=False,
                                 **self._objective(mode))
            t = build_trainer(DATASET_NAME, self.pre, scratch, CONFIGURATION, "all", config, device=self.device,
                              plans=plans, show_progress=False)
            batch = t.prepare_synthetic_steps()  # random batches of the plan's shape; CPS: an unlabeled one too
            times[mode] = median_seconds(t.train_step, batch, 2)
            if mode == "supervised":
                net = t.networks[0]
                net.eval()
                t.set_deep_supervision_enabled(False)
                window = batch["data"][:1].to(t.device)
                with torch.inference_mode():
                    times["window"] = median_seconds(net, window, 10)
        shutil.rmtree(scratch, ignore_errors=True)
        return {"supervised": times["supervised"], "cps": times["cps"], "window": times["window"]}

    @staticmethod
    def _objective(mode: str) -> dict:
        """TrainConfig fields of the demo's protocol for ``mode`` (the optimizer for both, the cross terms for CPS)."""
        return {**SHORT_RUN_OPTIMIZER, "lr_final_decay": FINAL_DECAY, **(CPS_OBJECTIVE if mode == "cps" else {})}

    def train(self, ds, plans: dict) -> dict[str, Path]:
        """CPS first, on the clock; then the baseline for exactly as many iterations.

        Measured step times size the epochs and the lambda ramp (``training_schedule``), but training stops on the
        clock: CPS gets its share of the budget (``max_minutes``), and the baseline then trains the epochs CPS
        completed (about a quarter of CPS's time: one network, one batch). Measurements are unreliable on a busy
        machine; the clock is not, so a slow machine trains fewer iterations and still ends with both models.
        """
        import torch

        from cps3d.training.config import TrainConfig

        self._step(3, "training CPS, then the supervised baseline for as many iterations (same labeled data)")
        settings_key = {"plans": _State.key(plans["configurations"][CONFIGURATION]), "minutes": self.c.minutes,
                        "device": self.device, "objective": self._objective("cps"), "test": self.c.test}
        if self.state.done("schedule", settings_key):
            schedule: TrainingSchedule = self.state.info("schedule")["schedule"]
        else:
            from cps3d.inference import PRESETS

            steps = self._measure_steps(plans)
            tests = [v["images"][0] for _, v in sorted(ds.test_cases().items())]
            # the three runs: baseline and CPS at the plan's spacing, CPS with the paper's forced spacing
            windows = 2 * sliding_windows(tests, plans, CONFIGURATION) + \
                sliding_windows(tests, plans, CONFIGURATION, PRESETS["paper"])
            schedule = training_schedule(self.c.minutes, self.device, steps["supervised"], steps["cps"],
                                         windows=windows, t_window=steps["window"], scored=len(RUNS) * self.c.test,
                                         elapsed_minutes=(time.monotonic() - self.t0) / 60)
            self.state.record("schedule", settings_key, schedule=schedule)
        log.info("Training schedule: CPS for %.1f minutes (about %d epochs x %d iterations expected from a measured "
                 "step of %.2f s; %.2f s supervised; lambda from 0 to 0.5 over %d epochs), then the baseline for "
                 "as many epochs (%d sliding windows to predict, %.1f ms per forward pass measured)",
                 schedule["cps_minutes"], schedule["expected_epochs"],
                 schedule["iters_per_epoch"], schedule["seconds_per_iteration"]["cps"],
                 schedule["seconds_per_iteration"]["supervised"], schedule["lambda_ramp_epochs"],
                 schedule["prediction_windows"], 1000 * schedule["seconds_per_iteration"]["window"])
        common: dict[str, Any] = dict(iters_per_epoch=schedule["iters_per_epoch"], val_iters=schedule["val_iters"],
                                      lambda_ramp_epochs=schedule["lambda_ramp_epochs"],
                                      lambda_start_epoch=schedule.get("lambda_start_epoch", 0),
                                      final_validation=False)
        cps = self._train_one("cps", TrainConfig(mode="cps", epochs=schedule["max_epochs"],
                                                 max_minutes=schedule["cps_minutes"], **common,
                                                 **self._objective("cps")), settings_key)
        epochs = int(torch.load(cps / "fold_all" / "checkpoint_final.pth", map_location="cpu",
                                weights_only=False)["current_epoch"])
        baseline = self._train_one("supervised", TrainConfig(mode="supervised", epochs=epochs, **common,
                                                             **self._objective("supervised")), settings_key)
        return {"Baseline": baseline, "CPS": cps}

    def _train_one(self, mode: str, config, settings_key: dict) -> Path:
        from cps3d.training.run import model_folder, train

        settings = {"train": config.to_dict(), "schedule": settings_key}
        folder = model_folder(self.res, DATASET_NAME, mode, DEFAULT_PLANS_NAME, CONFIGURATION)
        if not self.state.done(f"train_{mode}", settings):
            started = time.monotonic()
            resume = (folder / "fold_all" / "checkpoint_latest.pth").is_file() and \
                self.state.steps.get(f"train_{mode}_started", {}).get("key") == _State.key(settings)
            self.state.record(f"train_{mode}_started", settings)
            train(DATASET_NAME, self.pre, self.res, CONFIGURATION, "all", config, device=self.device,
                  continue_training=resume, overwrite=not resume, show_progress=self.c.progress)
            self.state.record(f"train_{mode}", settings, seconds=time.monotonic() - started)
        return folder

    def predict(self, ds, models: dict[str, Path]) -> dict[str, Path]:
        from cps3d.evaluation.profiler import FLARE_GPU_ALLOWANCE_MB, ResourceProfiler
        from cps3d.inference import PRESETS, PredictConfig, predict

        self._step(4, "predicting the test scans (step 0.7, no TTA; CPS also with the paper's forced spacing)")
        runs = {"Baseline": (models["Baseline"], None), "CPS": (models["CPS"], None),
                "CPS + forced spacing": (models["CPS"], PRESETS["paper"])}
        outputs = {}
        images = [str(self.raw / DATASET_NAME / "imagesTs")]
        for run, (model, fs) in runs.items():
            slug = run.lower().replace(" + ", "_").replace(" ", "_")
            out = self.work / "predictions" / slug
            # PredictConfig's defaults are the paper's step and no mirroring
            config = PredictConfig(folds=("all",), forced_spacing=fs, device=self.device, num_processes=1,
                                   progress=self.c.progress, overwrite=True)
            settings = {"predict": config.to_dict(), "model": self.state.steps.get(
                "train_" + ("supervised" if run == "Baseline" else "cps"), {}).get("key")}
            if not self.state.done(f"predict_{slug}", settings):
                with ResourceProfiler(interval=0.1) as prof:
                    report = predict(images, out, model, config, profiler=prof)
                if not report.ok:
                    raise RuntimeError(f"prediction failed for: {', '.join(map(str, report.failed))}")
                prof.write(self.work / "profiles" / slug, gpu_allowance_mb=FLARE_GPU_ALLOWANCE_MB,
                           extra={"run": run, "model": str(model)})
                self.state.record(f"predict_{slug}", settings)
            outputs[run] = out
        return outputs

    def evaluate(self, predictions: dict[str, Path]) -> dict[str, EvaluationResult]:
        from cps3d.evaluation import evaluate_folders, write_per_case_csv, write_summary_json

        self._step(5, "evaluating with the FLARE 2022 rules and writing the report")
        results = {}
        for run, folder in predictions.items():
            result = evaluate_folders(folder, self.raw / DATASET_NAME / "labelsTs",
                                      self.raw / DATASET_NAME / "dataset.json", num_processes=self.c.num_processes,
                                      progress=self.c.progress)
            write_summary_json(folder / "summary.json", result)
            write_per_case_csv(folder / "metrics_per_case.csv", result)
            results[run] = result
        return results

    def report(self, ds, models: dict[str, Path], predictions: dict[str, Path],
               results: dict[str, EvaluationResult]) -> Path:
        import torch

        from cps3d.report import efficiency_table, organ_table, plot_training_curves, qualitative_figure

        summaries = {run: r.summary for run, r in results.items()}
        # each test case's mean DSC over the organs, per run (the qualitative figure's captions)
        case_dice = {run: {c.case: float(np.mean([s[0] for s in c.scores.values()])) for c in r.cases}
                     for run, r in results.items()}

        figures = self.work / "report"
        figures.mkdir(exist_ok=True)
        logs = {}
        for run, folder in models.items():
            ckpt = torch.load(folder / "fold_all" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
            logs[run] = ckpt["logging"]
        plot_training_curves(logs, figures / "training_curves.png")
        tests = ds.test_cases()
        cases = sorted(tests)[:2]
        images = {c: tests[c]["images"][0] for c in cases}
        refs = {c: tests[c]["label"] for c in cases}
        preds = {run: {c: str(predictions[run] / f"{c}{ds.file_ending}") for c in cases} for run in predictions}
        qualitative_figure(cases, images, refs, preds, figures / "qualitative.png",
                           case_dice=case_dice)
        profiles = {}
        for run in predictions:
            slug = run.lower().replace(" + ", "_").replace(" ", "_")
            profiles[run] = read_json(self.work / "profiles" / slug / "profile.json")
        schedule = self.state.info("schedule")["schedule"]
        cps_ckpt = torch.load(models["CPS"] / "fold_all" / "checkpoint_final.pth", map_location="cpu",
                              weights_only=False)
        epochs = int(cps_ckpt["current_epoch"])
        last_lambda = float(cps_ckpt["logging"]["lambda"][-1])
        del cps_ckpt
        plan = read_json(self.pre / DATASET_NAME / f"{DEFAULT_PLANS_NAME}.json")["configurations"][CONFIGURATION]
        fp = read_json(self.pre / DATASET_NAME / "dataset_fingerprint.json")
        clip = fp["foreground_intensity_properties_per_channel"]["0"]
        table = organ_table({r: s for r, s in summaries.items()})
        train_s = {m: self.state.info(f"train_{m}").get("seconds") for m in ("supervised", "cps")}
        better = summaries["CPS"]["mean"]["DSC_mean"] - summaries["Baseline"]["mean"]["DSC_mean"]
        unlearned = not_learned({r: summaries[r] for r in ("Baseline", "CPS")})
        text = f"""# cps3d demo report

**These data are synthetic and the training budget is tiny.** The numbers below show that the whole system runs
end to end and how the pieces compare on this toy problem; they say nothing about accuracy on real CT.

## Dataset and budget
- Synthetic abdominal CT phantoms (`cps3d phantoms`, size `{self.c.size}`, seed {self.c.seed}):
  {self.c.labeled} labeled, {self.c.unlabeled} unlabeled and {self.c.test} held-out test scans with the 13 FLARE 2022 labels.
- Fingerprint: `{INTENSITY}` intensity statistics of labeled and unlabeled scans; CT clip window
  [{clip['percentile_00_5']:.0f}, {clip['percentile_99_5']:.0f}] HU, mean {clip['mean']:.0f}, std {clip['std']:.0f}.
- Plan ({CONFIGURATION}, ResEnc): patch {list(plan['patch_size'])} at spacing {[round(float(s), 2) for s in plan['spacing']]} mm,
  {plan['architecture']['arch_kwargs']['n_stages']} stages, features {list(plan['architecture']['arch_kwargs']['features_per_stage'])},
  batch {plan['batch_size']} labeled (+ {plan['unlabeled_batch_size']} unlabeled for CPS).
- Budget: {self.c.minutes:g} minutes in total on `{self.device}`. CPS trained for {schedule['cps_minutes']:.1f} minutes
  ({epochs} epochs x {schedule['iters_per_epoch']} iterations; lambda rising from 0 to 0.5 over the first
  {schedule['lambda_ramp_epochs']} epochs, {last_lambda:.2f} in the last one), then the baseline for the same
  {epochs} x {schedule['iters_per_epoch']} iterations, both on all labeled cases (fold "all"). Measured network step
  before training: {schedule['seconds_per_iteration']['supervised']:.2f} s (supervised) vs
  {schedule['seconds_per_iteration']['cps']:.2f} s (CPS), and one prediction window's forward pass
  {1000 * schedule['seconds_per_iteration']['window']:.1f} ms ({schedule['prediction_windows']} windows kept for the
  three predictions of the test scans). Training took {_seconds(train_s['supervised'])} (baseline) and
  {_seconds(train_s['cps'])} (CPS). A slower machine trains fewer iterations in the same budget.
- Inference: sliding window with step 0.7, no test-time augmentation, network 1, largest-component post-processing;
  "CPS + forced spacing" assumes the paper's spacing (0.75, 0.75, 0.5 mm by its slice-count rule). These phantoms have
  coarse voxels, so forced spacing shrinks them a lot: it is fast and distorts anatomy by the same ratio.

## How this protocol differs from the paper's, and why
The paper trains for 1000 epochs x 250 iterations on 8 GPUs; this demo has minutes on a CPU, so it uses what we
measured to learn fastest there (benchmarks/ssl_gain.py, on validation phantoms, never on these test scans):
- **2D** networks on whole slices of **coarse phantoms** (size `{self.c.size}`), batch {plan['batch_size']} + {plan['unlabeled_batch_size']}
  (the paper's 2D: 12 + 12); the paper also reports 3D.
- **Body intensity statistics** (voxels above -500 HU) instead of the paper's global ones: the unlabeled scans still
  count, but air no longer dominates the clip window and the normalisation (organ contrast about 3x larger).
- **SGD with lr {SHORT_RUN_OPTIMIZER['initial_lr']:g} and momentum {SHORT_RUN_OPTIMIZER['momentum']:g}** for both models
  instead of nnU-Net's 0.01 and 0.99 (the same effective step, but momentum 0.99 averages over about 100 steps, too
  slowly for a run of a few hundred), **falling linearly to 0 over the last {FINAL_DECAY:.0%} of each run** (not in
  the paper: at a constant rate the last weights are a noisy iterate; chosen on validation phantoms).
- **Few labeled cases, many test scans** ({self.c.labeled} labeled and {self.c.test} test here; 2 and 20 by default):
  in the benchmark CPS helped where labels limit (2 labeled cases, +0.029 mean DSC over 7 seeds at 1500 iterations
  with the paper's objective) and not with 5, and 4 test scans could not resolve a difference of 0.02 mean DSC. The paper has 50
  labeled and 2000 unlabeled scans.
- Lambda follows the paper's shape (0 to 0.5 over the first half of training), scaled to the run.
- The cross terms are the paper's (Dice+CE against the other network's argmax on every voxel). Cross-entropy on
  confident pseudo-labels (`--cps-loss ce --confidence 0.95`) was this demo's choice on 3 validation phantoms; on 20
  validation phantoms over 7 seeds the paper's did better (+0.013 mean DSC; the benchmark's "Seven seeds").

## Accuracy on the test scans (FLARE 2022 rules)
{table}

CPS minus baseline, mean DSC: {better:+.4f} ({"CPS better" if better > 0 else "CPS not better"} in this run).
{f"Organs neither model learned (DSC below {LEARNED_DSC:g} for both): {', '.join(unlearned)}." if unlearned else
 f"Both models learned every organ (DSC {LEARNED_DSC:g} or more for at least one of them)."}

## Efficiency (FLARE 2022 measures, prediction of the {self.c.test} test scans)
{efficiency_table(profiles)}

## Training curves
![training curves](report/training_curves.png)

## Qualitative results
The same axial slices of two test scans: image, reference, baseline, CPS and CPS with forced spacing.

![qualitative](report/qualitative.png)
"""
        path = self.work / "report.md"
        from cps3d.files import atomic_path

        with atomic_path(path) as tmp:
            Path(tmp).write_text(text)
        self.table = table
        return path

    def run(self) -> Path:
        if self.device == "cpu":
            # augmentation in the training process: background workers only compete for the same few cores
            os.environ.setdefault("nnUNet_n_proc_DA", "0")
        ds = self.data()
        plans = self.plan_and_preprocess(ds)
        models = self.train(ds, plans)
        predictions = self.predict(ds, models)
        results = self.evaluate(predictions)
        path = self.report(ds, models, predictions, results)
        elapsed = time.monotonic() - self.t0
        log.info("[demo %5.0f s] done (budget %.0f s)", elapsed, 60 * self.c.minutes)
        return path


LEARNED_DSC = 0.2  # below it an organ counts as not learned (FLARE 2022 scores NSD 0 there too)


def not_learned(summaries: Mapping[str, EvaluationSummary], threshold: float = LEARNED_DSC) -> list[str]:
    """The organs whose mean DSC is below ``threshold`` in every one of ``summaries`` ({run: FLARE summary})."""
    organs = next(iter(summaries.values()))["per_target"]
    return [o for o in organs if all(s["per_target"][o]["DSC_mean"] < threshold for s in summaries.values())]


def _seconds(v: float | None) -> str:
    return "(reused from an earlier run)" if v is None else f"{v:.0f} s"


def run_demo(config: DemoConfig = DemoConfig()) -> tuple[Path, str]:
    """Run the demo; returns the report path and the per-organ table (Markdown)."""
    os.environ.setdefault("nnUNet_compile", "false")
    demo = Demo(config)
    path = demo.run()
    return path, demo.table
