"""Prediction with a trained cps3d (or nnU-Net) model: the API behind ``cps3d predict``.

The pipeline per case is nnU-Net's: read (the plans' reader; DICOM series through SimpleITK), optionally assume a
forced spacing (:mod:`cps3d.inference.forced_spacing`), preprocess (``DefaultPreprocessor.run_case_npy``), sliding
window (``nnUNetPredictor``, loaded with ``manual_initialization``, its averaging over parameter sets used for
folds and for the two CPS branches), export on the original grid (:mod:`cps3d.inference.export`), post-process
(:mod:`cps3d.inference.postprocessing`) and write atomically.

Reading and export run in ``num_processes`` worker processes each while the main process runs the network; with
``num_processes=1`` everything runs in this process. A case that fails (unreadable file, bad geometry, ...) is
reported with its input and the run goes on with the others.

Ensembles (several folds and/or both branches): nnU-Net averages the parameter sets' *logits*. By default we average
their *probabilities* (softmax, or sigmoid for region models), as the CPS trainer's validation does; the predictor
then hands nnU-Net's export the logarithm of the averaged probabilities (for softmax, softmax(log p) = p, so the
label map and saved probabilities are those of the averaged probabilities). ``ensemble_average="logits"`` restores
nnU-Net's behaviour. With a single parameter set the two are the same and nothing is converted.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import multiprocessing
import os
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from tqdm import tqdm

from cps3d import __version__
from cps3d.files import check_output_folder, read_json, write_json
from cps3d.images import error_text, verify_image
from cps3d.inference.export import EXPORT_MODES, ExportJob, export_case, output_paths
from cps3d.inference.forced_spacing import PRESETS, ForcedSpacing, force_spacing_on_properties
from cps3d.inference.inputs import Case, list_cases, read_dicom_series
from cps3d.inference.model import BRANCHES, DEFAULT_CHECKPOINT, LoadedModel, load_model
from cps3d.inference.postprocessing import Postprocessing
from cps3d.parallel import imap_cases

log = logging.getLogger(__name__)

__all__ = ["PredictConfig", "PROTOCOLS", "CaseResult", "CaseFailure", "PredictionReport", "CPSPredictor",
           "make_predictor", "prepare_case", "predict"]

AVERAGES = ("probabilities", "logits")
DICOM_ENDING = ".nii.gz"

# whole inference protocols selectable with one flag
PROTOCOLS: dict[str, dict[str, Any]] = {
    "paper": {"step_size": 0.7, "use_mirroring": False, "forced_spacing": PRESETS["paper"]},
    "nnunet": {"step_size": 0.5, "use_mirroring": True, "forced_spacing": None},
}


@dataclass(frozen=True)
class PredictConfig:
    """How to predict. Defaults follow the paper where it trades nothing away: step 0.7, no mirroring (TTA).

    folds: fold numbers or ``"all"`` (None: every ``fold_N`` holding ``checkpoint``). branch: ``1``, ``2`` or
    ``ensemble`` (both networks of a CPS model). ensemble_average: ``probabilities`` or ``logits`` (nnU-Net's) when
    several parameter sets are averaged. step_size: sliding-window step as a fraction of the patch (0, 1].
    use_mirroring: nnU-Net's mirroring test-time augmentation. device: ``cpu``, ``cuda``, ``cuda:N`` or None (CUDA when
    available). forced_spacing: a :class:`ForcedSpacing` rule or None (off). postprocess: keep the largest component
    of each label in ``postprocess_labels`` (None: all; nnU-Net's ``postprocessing.pkl`` when the model folder has
    one). save_probabilities: also write nnU-Net's ``CASE.npz`` + ``CASE.pkl``. export_mode: ``low_memory`` (one
    class at a time) or ``nnunet`` (all classes at once; always so with probabilities). overwrite: predict cases whose
    output exists. part_id / num_parts: predict only every ``num_parts``-th case from ``part_id`` (sorted case ids).
    num_processes: worker processes for reading and for export (1: everything in this process). progress: show a
    progress bar.
    """

    folds: tuple[int | str, ...] | None = None
    checkpoint: str = DEFAULT_CHECKPOINT
    branch: str = "1"
    ensemble_average: str = "probabilities"
    step_size: float = 0.7
    use_mirroring: bool = False
    device: str | None = None
    forced_spacing: ForcedSpacing | None = None
    postprocess: bool = True
    postprocess_labels: tuple[int, ...] | None = None
    save_probabilities: bool = False
    export_mode: str = "low_memory"
    overwrite: bool = False
    part_id: int = 0
    num_parts: int = 1
    num_processes: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "branch", str(self.branch))
        if self.branch not in BRANCHES:
            raise ValueError(f"branch={self.branch!r}: choose one of {', '.join(BRANCHES)}")
        if self.ensemble_average not in AVERAGES:
            raise ValueError(f"ensemble_average={self.ensemble_average!r}: choose one of {', '.join(AVERAGES)}")
        if not (isinstance(self.step_size, (int, float)) and math.isfinite(self.step_size)
                and 0 < self.step_size <= 1):
            raise ValueError(f"step_size={self.step_size!r}: must be in (0, 1] (a fraction of the patch size)")
        if self.device is not None and not (self.device in ("cpu", "cuda") or
                                            (self.device.startswith("cuda:") and self.device[5:].isdigit())):
            raise ValueError(f"device={self.device!r}: choose cpu, cuda or cuda:N")
        if self.forced_spacing is not None and not isinstance(self.forced_spacing, ForcedSpacing):
            raise ValueError(f"forced_spacing={self.forced_spacing!r}: give a ForcedSpacing or None")
        if self.postprocess_labels is not None:
            object.__setattr__(self, "postprocess_labels", tuple(int(v) for v in self.postprocess_labels))
            Postprocessing("largest_component", self.postprocess_labels)  # validates the labels
        if self.export_mode not in EXPORT_MODES:
            raise ValueError(f"export_mode={self.export_mode!r}: choose one of {', '.join(EXPORT_MODES)}")
        if not isinstance(self.num_parts, int) or not isinstance(self.part_id, int) or self.num_parts < 1 \
                or not 0 <= self.part_id < self.num_parts:
            raise ValueError(f"part_id={self.part_id!r}, num_parts={self.num_parts!r}: need num_parts >= 1 and "
                             "0 <= part_id < num_parts")
        if not isinstance(self.num_processes, int) or self.num_processes < 1:
            raise ValueError(f"num_processes={self.num_processes!r}: must be at least 1")
        if not self.checkpoint or os.sep in self.checkpoint:
            raise ValueError(f"checkpoint={self.checkpoint!r}: give a file name inside fold_N/, e.g. "
                             f"{DEFAULT_CHECKPOINT}")
        if self.folds is not None:
            object.__setattr__(self, "folds", tuple(self.folds))

    @classmethod
    def for_protocol(cls, protocol: str, **overrides: Any) -> PredictConfig:
        """A configuration with a whole protocol's settings (``paper``: step 0.7, no TTA, forced spacing ``paper``;
        ``nnunet``: step 0.5, TTA, no forced spacing); ``overrides`` win over the protocol."""
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)}")
        return cls(**{**PROTOCOLS[protocol], **overrides})

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["forced_spacing"] = None if self.forced_spacing is None else self.forced_spacing.to_dict()
        for key in ("folds", "postprocess_labels"):
            d[key] = None if d[key] is None else list(d[key])
        return d


@dataclass
class CaseResult:
    """One predicted case. Geometry in index order (x, y, z as in the file header); ``network_shape`` in the
    network's array order; ``assumed_spacing`` is None without forced spacing."""

    case_id: str
    source: str
    files: list[str]
    shape: list[int]
    spacing: list[float]
    assumed_spacing: list[float] | None
    network_shape: list[int]
    network_voxels: int
    predict_seconds: float
    export_seconds: float = 0.0
    labels: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class CaseFailure:
    case_id: str | None
    source: str
    error: str

    def __str__(self) -> str:
        return f"{self.case_id or '-'} ({self.source}): {self.error}"


@dataclass
class PredictionReport:
    """What a run did: ``predicted``, ``skipped`` (output existed), ``failed`` (with the input and the error)."""

    output_dir: Path
    predicted: list[CaseResult] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[CaseFailure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


# ------------------------------------------------------------------------------------------------------- predictor


def _probabilities_to_logits(p, has_regions: bool):
    """Logits whose nonlinearity gives back ``p``: log p for softmax (softmax(log p) = p when p sums to 1), the
    logit function for sigmoids. Clamped so that no value is infinite (resampling would turn inf into NaN)."""
    tiny = torch.finfo(p.dtype).tiny
    if has_regions:
        p = p.clamp(tiny, 1 - torch.finfo(p.dtype).eps)
        return torch.log(p) - torch.log1p(-p)
    return torch.log(p.clamp_min(tiny))


class CPSPredictor(nnUNetPredictor):
    """nnU-Net's predictor; with several parameter sets and ``average='probabilities'`` it averages probabilities
    instead of logits (module docstring). Everything else, including the loop over parameter sets, is nnU-Net's."""

    average = "probabilities"

    def _averages_probabilities(self) -> bool:
        return self.average == "probabilities" and len(self.list_of_parameters or ()) > 1

    def predict_sliding_window_return_logits(self, input_image):
        out = super().predict_sliding_window_return_logits(input_image)
        if self._averages_probabilities():
            out = self.label_manager.apply_inference_nonlin(out)
        return out

    def predict_logits_from_preprocessed_data(self, data):
        out = super().predict_logits_from_preprocessed_data(data)
        if self._averages_probabilities():
            out = _probabilities_to_logits(out, self.label_manager.has_regions)
        return out


def resolve_device(device: str | None) -> torch.device:
    """``None`` -> CUDA when available, else CPU; a CUDA device without CUDA is a ValueError."""
    if device is None:
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was requested but no CUDA device is available; use cpu")
    return torch.device(device)


def make_predictor(model: LoadedModel, config: PredictConfig):
    """An initialised nnU-Net predictor (our subclass) for ``model`` under ``config``."""
    device = resolve_device(config.device)
    with contextlib.redirect_stdout(io.StringIO()) as said:  # nnU-Net prints a notice for CPU devices
        predictor = CPSPredictor(tile_step_size=config.step_size, use_gaussian=True,
                                 use_mirroring=config.use_mirroring, perform_everything_on_device=device.type == "cuda",
                                 device=device, verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    if said.getvalue().strip():
        log.debug("nnU-Net: %s", said.getvalue().strip())
    predictor.average = config.ensemble_average
    pm = model.plans_manager
    cm = pm.get_configuration(model.configuration)
    with contextlib.redirect_stdout(io.StringIO()):
        predictor.manual_initialization(model.build_network(), pm, cm, model.parameters, model.dataset_json,
                                        model.trainer_name, model.mirror_axes)
    return predictor


# ------------------------------------------------------------------------------------------------------- one case


def _first_line(e: BaseException) -> str:
    """The exception's type and the informative line of its message (see :func:`cps3d.images.error_text`)."""
    text = error_text(e)
    return type(e).__name__ if text == type(e).__name__ else f"{type(e).__name__}: {text}"


def input_dimension(plans: dict) -> int:
    """Number of dimensions of the images a model was trained on: 2 when nnU-Net's readers marked the dataset's
    images as 2-D (they give the missing axis a spacing of 999), else 3."""
    return 2 if 999 in [float(s) for s in plans.get("original_median_spacing_after_transp", ())] else 3


def prepare_case(case: Case, plans: dict, configuration: str, dataset_json: dict,
                 forced_spacing: ForcedSpacing | None) -> dict:
    """Read and preprocess one case (runs in worker processes). Returns ``{"data"`` (channels, *network-order
    shape) float32, ``"properties"`` (nnU-Net's), ``"info"`` (geometry for logs and the report)``}``.
    Raises ValueError naming the input when it cannot be read or used: every channel file is first read in full by
    :func:`cps3d.images.verify_image` (nnU-Net's SimpleITK reader turns a truncated NIfTI's missing voxels and NaN
    into zeros without a word), which names an empty, truncated or corrupt file, NaN or infinite voxels and an
    image of another dimensionality than the model's."""
    pm = PlansManager(plans)
    cm = pm.get_configuration(configuration)
    n_channels = len(dataset_json["channel_names"])
    if case.kind != "dicom":
        dimension = input_dimension(plans)
        for f in case.files:
            try:
                verify_image(f, dimension)
            except FileNotFoundError as e:
                raise ValueError(str(e)) from e
    said = io.StringIO()
    if case.kind == "dicom":
        data, properties = read_dicom_series(case)  # its errors name the series and what is wrong
    else:
        try:
            with contextlib.redirect_stdout(said):
                data, properties = pm.image_reader_writer_class().read_images(list(case.files))
        except Exception as e:
            extra = " ".join(said.getvalue().split())
            raise ValueError(f"{case.source}: cannot read ({_first_line(e)}{'; ' + extra if extra else ''})") from e
    if data.ndim != 4 or data.shape[0] != n_channels:
        raise ValueError(f"{case.source}: read {data.shape[0] if data.ndim == 4 else '?'} channel(s) of shape "
                         f"{data.shape}, the model expects {n_channels} channel(s) of a 3D image")
    if not math.isfinite(float(np.sum(data, dtype=np.float64))):  # NaN/inf anywhere; no full-size mask
        raise ValueError(f"{case.source}: holds NaN or infinite values")
    index_shape = [int(s) for s in data.shape[1:][::-1]]
    index_spacing = [float(s) for s in properties["spacing"][::-1]]
    info: dict[str, Any] = {"shape": index_shape, "spacing": index_spacing, "assumed_spacing": None}
    if forced_spacing is not None:
        try:
            forced = force_spacing_on_properties(properties, data.shape[1:], forced_spacing)
        except ValueError as e:
            raise ValueError(f"{case.source}: {e}") from e
        info["assumed_spacing"] = [float(s) for s in forced["assumed_spacing"][::-1]]
        info["n_slices"] = forced["n_slices"]
    # hand the image over without keeping a reference here: nnU-Net's first step copies it (astype), and the
    # original can then be freed before the resampling, which is the peak of the whole prediction
    holder = [data]
    del data
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            data, _, properties = DefaultPreprocessor(verbose=False).run_case_npy(holder.pop(), None, properties, pm,
                                                                                  cm, dataset_json)
    except Exception as e:
        raise ValueError(f"{case.source}: preprocessing failed ({_first_line(e)})") from e
    info["network_shape"] = [int(s) for s in data.shape[1:]]
    info["network_voxels"] = int(np.prod(data.shape[1:]))
    return {"data": data, "properties": properties, "info": info}


def _fmt(values: Sequence[float]) -> str:
    return " x ".join(f"{v:.4g}" for v in values)


# ------------------------------------------------------------------------------------------------------- the run


def _is_reader(cls: type, name: str) -> bool:
    """Whether ``cls`` is (a subclass of) the class called ``name``."""
    return any(k.__name__ == name for k in cls.__mro__)


def _summary_name(config: PredictConfig) -> str:
    return "cps3d_predict.json" if config.num_parts == 1 else \
        f"cps3d_predict_part{config.part_id}of{config.num_parts}.json"


def predict(inputs: Sequence[str | os.PathLike], output_dir: str | os.PathLike, model_dir: str | os.PathLike,
            config: PredictConfig | None = None, profiler=None) -> PredictionReport:
    """Predict every case of ``inputs`` (folders, files, DICOM series folders) into ``output_dir``.

    Output: ``CASE<file_ending>`` label maps on each scan's original grid (DICOM series: ``CASE.nii.gz``), with
    ``CASE.npz`` / ``CASE.pkl`` when probabilities are saved, plus ``dataset.json``, ``plans.json`` (as nnU-Net
    writes them) and ``cps3d_predict.json`` (configuration, model, per-case geometry, failures; entries of cases
    skipped now are kept from the previous run). ``profiler``: a started
    :class:`cps3d.evaluation.profiler.ResourceProfiler`; each case is marked on it (with ``num_processes=1`` the
    mark covers the whole case, otherwise its network pass: reading and export then run in worker processes).

    Raises FileNotFoundError / ValueError for a missing or unusable model folder, missing input paths and an output
    folder that cannot be one (a file, or not writable). Problems of single cases do not raise: they are in the
    report's ``failed`` list.
    """
    config = config or PredictConfig()
    check_output_folder(output_dir)  # before anything is read: not after the first case
    resolve_device(config.device)  # a CUDA request without CUDA fails before anything is read or written
    model = load_model(model_dir, config.folds, config.checkpoint, config.branch)
    pm = model.plans_manager
    cm = pm.get_configuration(model.configuration)
    if cm.preprocessor_name != "DefaultPreprocessor":
        raise ValueError(f"{model.model_dir}: plans ask for preprocessor {cm.preprocessor_name!r}; cps3d predict "
                         "supports DefaultPreprocessor")
    file_ending = model.dataset_json["file_ending"]
    reader = pm.image_reader_writer_class
    endings = [file_ending] + [e for e in getattr(reader, "supported_file_endings", []) if e != file_ending]
    num_channels = len(model.dataset_json["channel_names"])
    cases, problems = list_cases(inputs, endings, num_channels)
    if any(c.kind == "dicom" for c in cases) and not _is_reader(reader, "SimpleITKIO"):
        raise ValueError(f"DICOM input needs a model whose plans read images with SimpleITKIO; "
                         f"{model.model_dir} uses {reader.__name__}")

    # the share of this part: every num_parts-th of all case ids (including those with input problems)
    ids = sorted({c.case_id for c in cases} | {p.case_id for p in problems if p.case_id})
    mine = set(ids[config.part_id::config.num_parts])
    report = PredictionReport(Path(output_dir))
    for p in problems:
        if (p.case_id in mine) if p.case_id else config.part_id == 0:
            report.failed.append(CaseFailure(p.case_id, p.path, p.message))
    cases = [c for c in cases if c.case_id in mine]
    out_dir = Path(output_dir).expanduser()
    for given in inputs:
        if Path(given).expanduser().is_dir() and out_dir.resolve() == Path(given).expanduser().resolve():
            raise ValueError(f"{out_dir}: the output folder is also an input folder; choose another output folder "
                             "(label maps written there would be read as scans next time)")
    if not ids:  # nothing to predict or to skip: leave the output folder as it is (the problems say why)
        log.info("no case in the input; nothing written to %s", out_dir)
        return report
    out_dir.mkdir(parents=True, exist_ok=True)
    todo: list[Case] = []
    for c in cases:
        paths = output_paths(out_dir, c.case_id, DICOM_ENDING if c.kind == "dicom" else file_ending)
        needed = [paths["seg"]] + ([paths["npz"], paths["pkl"]] if config.save_probabilities else [])
        if not config.overwrite and all(p.is_file() for p in needed):
            report.skipped.append(c.case_id)
        else:
            todo.append(c)
    log.info("%d case(s) in the input%s: %d to predict, %d skipped (output exists; --overwrite to redo), "
             "%d with input problems", len(ids), f" (part {config.part_id} of {config.num_parts}: {len(mine)})"
             if config.num_parts > 1 else "", len(todo), len(report.skipped), len(report.failed))
    write_json(out_dir / "dataset.json", model.dataset_json)
    write_json(out_dir / "plans.json", model.plans)
    postprocessing = Postprocessing.for_model(model.model_dir, config.postprocess, config.postprocess_labels)
    log.info("Model %s (%s, folds %s, branch %s: %d parameter set(s)); step %.2f, mirroring %s, forced spacing %s, "
             "post-processing: %s", model.model_dir.name, model.mode, ",".join(map(str, model.folds)), model.branch,
             len(model.parameters), config.step_size, "on" if config.use_mirroring else "off",
             "off" if config.forced_spacing is None else _fmt([config.forced_spacing.sx, config.forced_spacing.sy,
                                                              config.forced_spacing.sz]) + " mm",
             postprocessing.describe())

    if todo:
        predictor = make_predictor(model, config)
        _run(todo, model, config, predictor, postprocessing, out_dir, file_ending, report, profiler)
        del predictor
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    summary = out_dir / _summary_name(config)
    predicted = {}
    if report.skipped and summary.is_file():  # keep what the earlier run recorded about the cases skipped now
        try:
            earlier = read_json(summary).get("predicted", {})
        except ValueError:
            earlier = {}
        predicted = {k: v for k, v in earlier.items() if k in set(report.skipped)}
    predicted.update({r.case_id: {k: v for k, v in vars(r).items() if k != "case_id"} for r in report.predicted})
    write_json(summary, {
        "cps3d_version": __version__,
        "inputs": [str(i) for i in inputs],
        "config": config.to_dict(),
        "model": model.describe(),
        "postprocessing": postprocessing.to_dict(),
        "predicted": predicted,
        "skipped": report.skipped,
        "failed": [{"case_id": f.case_id, "source": f.source, "error": f.error} for f in report.failed],
    })
    return report


class _Runner:
    """The loop over cases: reading, network, export; failures are recorded per case and the loop goes on."""

    def __init__(self, model: LoadedModel, config: PredictConfig, predictor, postprocessing: Postprocessing,
                 out_dir: Path, file_ending: str, report: PredictionReport, profiler, bar) -> None:
        self.model, self.config, self.predictor, self.postprocessing = model, config, predictor, postprocessing
        self.out_dir, self.file_ending, self.report, self.profiler, self.bar = \
            out_dir, file_ending, report, profiler, bar

    def args(self, case: Case) -> tuple:
        m = self.model
        return case, m.plans, m.configuration, m.dataset_json, self.config.forced_spacing

    def mark(self, case: Case):
        return self.profiler.case(case.case_id) if self.profiler is not None else contextlib.nullcontext()

    def fail(self, case: Case, error: BaseException | str, stage: str = "") -> None:
        if isinstance(error, ValueError) and not stage:
            message = str(error)  # our read/preprocess errors already name the input
        else:
            message = f"{stage + ': ' if stage else ''}{error if isinstance(error, str) else _first_line(error)}"
        self.report.failed.append(CaseFailure(case.case_id, case.source, message))
        log.error("%s: %s", case.case_id, message)
        self.bar.update()

    def network(self, case: Case, prepared: dict) -> tuple[CaseResult, ExportJob] | None:
        """Log the case's geometry, run the network; returns the result so far and the export job (None: failed)."""
        info = prepared["info"]
        log.info("%s: %s voxels, spacing %s mm%s; network sees %s = %d voxels", case.case_id, _fmt(info["shape"]),
                 _fmt(info["spacing"]), f", assumed {_fmt(info['assumed_spacing'])} mm ({info['n_slices']} slices)"
                 if info["assumed_spacing"] is not None else "", _fmt(info["network_shape"]), info["network_voxels"])
        result = CaseResult(case.case_id, case.source, [], info["shape"], info["spacing"], info["assumed_spacing"],
                            info["network_shape"], info["network_voxels"], 0.0)
        dicom = case.kind == "dicom"
        job = ExportJob(case.case_id, None, prepared["properties"], self.model.plans, self.model.configuration,
                        self.model.dataset_json, str(self.out_dir), DICOM_ENDING if dicom else self.file_ending,
                        "sitk" if dicom else "plans", self.config.save_probabilities, self.config.export_mode,
                        self.postprocessing,
                        None if info["assumed_spacing"] is None else [float(v) for v in info["spacing"][::-1]])
        t0 = time.perf_counter()
        try:
            logits = self.predictor.predict_logits_from_preprocessed_data(torch.from_numpy(prepared.pop("data")))
            job.logits = logits.cpu().numpy()
        except Exception as e:  # e.g. out of memory: report the case, go on with the others
            self.fail(case, e, "prediction failed")
            return None
        result.predict_seconds = time.perf_counter() - t0
        return result, job

    def finished(self, result: CaseResult, outcome: dict | BaseException) -> None:
        if isinstance(outcome, BaseException):
            self.report.failed.append(CaseFailure(result.case_id, result.source,
                                                  f"export failed: {_first_line(outcome)}"))
            log.error("%s: export failed: %s", result.case_id, _first_line(outcome))
        else:
            result.export_seconds = outcome["export_seconds"]
            result.labels = outcome["labels"]
            result.files = outcome["files"]
            self.report.predicted.append(result)
        self.bar.update()

    def run_in_process(self, todo: list[Case]) -> None:
        """Everything in this process, one case after the other; a profiler mark covers the whole case."""
        for case in todo:
            with self.mark(case):
                try:
                    prepared = prepare_case(*self.args(case))
                except Exception as e:
                    self.fail(case, e)
                    continue
                done = self.network(case, prepared)
                del prepared
                if done is None:
                    continue
                result, job = done
                try:
                    outcome: dict | BaseException = export_case(job)
                except Exception as e:
                    outcome = e
                del job
                self.finished(result, outcome)

    def run_pipelined(self, todo: list[Case], n_proc: int) -> None:
        """Reading and export in ``n_proc`` worker processes each, the network here; marks cover the network."""
        pending: dict[Future, CaseResult] = {}

        def drain(limit: int) -> None:
            while len(pending) > limit:
                done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                for f in done:
                    result = pending.pop(f)
                    exc = f.exception()
                    self.finished(result, exc if exc is not None else f.result())

        with ProcessPoolExecutor(n_proc, mp_context=multiprocessing.get_context("spawn")) as pool:
            for i, prepared in imap_cases(prepare_case, [self.args(c) for c in todo], num_processes=n_proc,
                                          progress=False, max_pending=n_proc + 1):
                case = todo[i]
                if isinstance(prepared, BaseException):
                    self.fail(case, prepared)
                    continue
                with self.mark(case):
                    done = self.network(case, prepared)
                del prepared
                if done is not None:
                    pending[pool.submit(export_case, done[1])] = done[0]
                    del done
                drain(n_proc)  # bounded: at most n_proc exports (each holding its logits) wait at a time
            drain(0)


def _run(todo: list[Case], model: LoadedModel, config: PredictConfig, predictor, postprocessing: Postprocessing,
         out_dir: Path, file_ending: str, report: PredictionReport, profiler) -> None:
    with tqdm(total=len(todo), desc="predict", disable=not config.progress, dynamic_ncols=True,
              leave=False) as bar:
        runner = _Runner(model, config, predictor, postprocessing, out_dir, file_ending, report, profiler, bar)
        if config.num_processes > 1 and len(todo) > 1:
            runner.run_pipelined(todo, config.num_processes)
        else:
            runner.run_in_process(todo)
