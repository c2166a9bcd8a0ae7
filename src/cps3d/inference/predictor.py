"""Prediction with a trained cps3d (or nnU-Net) model: the API behind ``cps3d predict``, the run over the cases.
Its configuration and results live in :mod:`cps3d.inference.config`, reading and preprocessing one case in
:mod:`cps3d.inference.prepare`.

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
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from tqdm import tqdm

from cps3d import __version__
from cps3d.devices import resolve_device
from cps3d.files import check_output_folder, read_json, write_json
from cps3d.images import format_values
from cps3d.inference.config import PROTOCOLS, CaseFailure, CaseResult, PredictConfig, PredictionReport
from cps3d.inference.export import ExportJob, ExportResult, export_case, output_paths
from cps3d.inference.fast import resample_to_plan, segmentation_torch, torch_export
from cps3d.inference.inputs import Case, list_cases, select_part
from cps3d.inference.model import LoadedModel, load_model
from cps3d.inference.postprocessing import Postprocessing
from cps3d.inference.prepare import PreparedCase, first_line, prepare_case
from cps3d.parallel import imap_cases

log = logging.getLogger(__name__)

__all__ = ["PredictConfig", "PROTOCOLS", "CaseResult", "CaseFailure", "PredictionReport", "CPSPredictor",
           "make_predictor", "prepare_case", "predict"]

DICOM_ENDING = ".nii.gz"


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
    keep_on_device = False  # the torch export: the logits stay on the network's device for it

    def _averages_probabilities(self) -> bool:
        return self.average == "probabilities" and len(self.list_of_parameters or ()) > 1

    def predict_sliding_window_return_logits(self, input_image):
        out = super().predict_sliding_window_return_logits(input_image)
        if self._averages_probabilities():
            out = self.label_manager.apply_inference_nonlin(out)
        return out

    def predict_logits_from_preprocessed_data(self, data):
        if self.keep_on_device and self.device.type != "cpu":
            out = self._logits_on_device(data)
        else:
            out = super().predict_logits_from_preprocessed_data(data)
        if self._averages_probabilities():
            out = _probabilities_to_logits(out, self.label_manager.has_regions)
        return out

    @torch.inference_mode()
    def _logits_on_device(self, data):
        """nnU-Net's loop over the parameter sets, with the sum kept on the device: nnU-Net moves every set's logits
        to the CPU (against running out of GPU memory with several sets), which the fast path would have to move
        back for the export. One set's logits fall back to the CPU as in nnU-Net when the device runs out."""
        out = None
        network = getattr(self.network, "_orig_mod", self.network)  # a torch.compile'd network wraps the module
        for params in self.list_of_parameters:
            network.load_state_dict(params)
            logits = self.predict_sliding_window_return_logits(data)
            out = logits if out is None else out.add_(logits.to(out.device))
            del logits
        if len(self.list_of_parameters) > 1:
            out /= len(self.list_of_parameters)
        return out


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
    predictor.keep_on_device = torch_export(config.resampling) and not config.save_probabilities
    pm = model.plans_manager
    cm = pm.get_configuration(model.configuration)
    with contextlib.redirect_stdout(io.StringIO()):
        predictor.manual_initialization(model.build_network(), pm, cm, model.parameters, model.dataset_json,
                                        model.trainer_name, model.mirror_axes)
    return predictor


def _fmt(values: Sequence[float]) -> str:
    return format_values(values, 4, " x ")


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
    mine = set(select_part(ids, config.part_id, config.num_parts, key=str))
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
        return case, m.plans, m.configuration, m.dataset_json, self.config.forced_spacing, self.config.resampling

    def mark(self, case: Case):
        return self.profiler.case(case.case_id) if self.profiler is not None else contextlib.nullcontext()

    def fail(self, case: Case, error: BaseException | str, stage: str = "") -> None:
        if isinstance(error, ValueError) and not stage:
            message = str(error)  # our read/preprocess errors already name the input
        else:
            message = f"{stage + ': ' if stage else ''}{error if isinstance(error, str) else first_line(error)}"
        self.report.failed.append(CaseFailure(case.case_id, case.source, message))
        log.error("%s: %s", case.case_id, message)
        self.bar.update()

    def network(self, case: Case, prepared: PreparedCase) -> tuple[CaseResult, ExportJob] | None:
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
        p = self.predictor
        try:
            data = torch.from_numpy(prepared.pop("data"))
            if "resample_target" in prepared:  # resampling="torch": to the plan spacing on the network's device
                data = resample_to_plan(data, prepared["resample_target"], p.configuration_manager, p.device)
            logits = p.predict_logits_from_preprocessed_data(data)
            del data
        except Exception as e:  # e.g. out of memory: report the case, go on with the others
            self.fail(case, e, "prediction failed")
            return None
        result.predict_seconds = time.perf_counter() - t0
        if torch_export(self.config.resampling) and not self.config.save_probabilities:
            t0 = time.perf_counter()
            try:  # the export's resampling where the logits are; workers only post-process and write
                job.label_map = segmentation_torch(logits, p.plans_manager, p.configuration_manager, p.label_manager,
                                                   prepared["properties"])
            except Exception as e:
                self.fail(case, e, "export failed")
                return None
            job.seconds_before = time.perf_counter() - t0
        else:
            job.logits = logits.cpu().numpy()
        return result, job

    def finished(self, result: CaseResult, outcome: ExportResult | BaseException) -> None:
        if isinstance(outcome, BaseException):
            self.report.failed.append(CaseFailure(result.case_id, result.source,
                                                  f"export failed: {first_line(outcome)}"))
            log.error("%s: export failed: %s", result.case_id, first_line(outcome))
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
                    outcome: ExportResult | BaseException = export_case(job)
                except Exception as e:
                    outcome = e
                del job
                self.finished(result, outcome)

    def run_pipelined(self, todo: list[Case], n_proc: int) -> None:
        """Reading and export in ``n_proc`` worker processes each, the network here; marks cover the network.
        The network's results feed the export pool as they come; at most ``n_proc + 1`` exports (each holding its
        logits) wait at a time, so the network stops while the exports fall behind."""
        results: list[CaseResult | None] = []

        def export_jobs() -> Iterator[tuple[ExportJob]]:
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
                    results.append(done[0])
                    box = [done[1]]
                    del done
                    yield (box.pop(),)  # no reference stays here while the export runs (its logits are large)

        for k, outcome in imap_cases(export_case, export_jobs(), num_processes=n_proc, progress=False,
                                     max_pending=n_proc + 1):
            result = results[k]
            results[k] = None
            assert result is not None  # each export is yielded once
            self.finished(result, outcome)


def _run(todo: list[Case], model: LoadedModel, config: PredictConfig, predictor, postprocessing: Postprocessing,
         out_dir: Path, file_ending: str, report: PredictionReport, profiler) -> None:
    with tqdm(total=len(todo), desc="predict", disable=not config.progress, dynamic_ncols=True,
              leave=False) as bar:
        runner = _Runner(model, config, predictor, postprocessing, out_dir, file_ending, report, profiler, bar)
        if config.num_processes > 1 and len(todo) > 1:
            runner.run_pipelined(todo, config.num_processes)
        else:
            runner.run_in_process(todo)
