"""What ``cps3d predict`` is asked to do and what it reports: :class:`PredictConfig`, the named protocols, and
the per-case results of a run (:class:`CaseResult`, :class:`CaseFailure`, :class:`PredictionReport`)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from cps3d.inference.export import EXPORT_MODES
from cps3d.inference.forced_spacing import PRESETS, ForcedSpacing
from cps3d.inference.model import BRANCHES, DEFAULT_CHECKPOINT
from cps3d.inference.postprocessing import Postprocessing

__all__ = ["AVERAGES", "PROTOCOLS", "PredictConfig", "CaseResult", "CaseFailure", "PredictionReport"]

AVERAGES = ("probabilities", "logits")

# whole inference protocols selectable with one flag; "nnunet" is stock nnU-Net's prediction, label maps identical
# to nnUNetPredictor's with the same weights (hence its exact resampling)
PROTOCOLS: dict[str, dict[str, Any]] = {
    "paper": {"step_size": 0.7, "use_mirroring": False, "forced_spacing": PRESETS["paper"]},
    "nnunet": {"step_size": 0.5, "use_mirroring": True, "forced_spacing": None, "resampling": "exact"},
}


@dataclass(frozen=True)
class PredictConfig:
    """How to predict. Defaults follow the paper where it trades nothing away: its step and no mirroring (TTA), but
    no forced spacing.

    folds: fold numbers or ``"all"`` (None: every ``fold_N`` holding ``checkpoint``). branch: ``1``, ``2`` or
    ``ensemble`` (both networks of a CPS model). ensemble_average: ``probabilities`` or ``logits`` (nnU-Net's) when
    several parameter sets are averaged. step_size: sliding-window step as a fraction of the patch (0, 1].
    use_mirroring: nnU-Net's mirroring test-time augmentation. device: ``cpu``, ``cuda``, ``cuda:N`` or None (CUDA when
    available). forced_spacing: a :class:`ForcedSpacing` rule or None (off). postprocess: keep the largest component
    of each label in ``postprocess_labels`` (None: all; nnU-Net's ``postprocessing.pkl`` when the model folder has
    one). save_probabilities: also write nnU-Net's ``CASE.npz`` + ``CASE.pkl``. export_mode: ``low_memory`` (one
    class at a time) or ``nnunet`` (all classes at once; always so with probabilities) for the exact path.
    resampling (one of :data:`cps3d.inference.fast.RESAMPLINGS`): ``torch-export`` (the default: the scan resampled
    by nnU-Net's own preprocessing, the export on nnU-Net's torch resampling on the network's device, one class at a
    time; it meets issue 14's agreement bar with stock nnU-Net and is faster than ``exact``), ``exact`` (the plans'
    resampling of the scan and of the export, label maps identical to stock nnU-Net's) or ``torch`` (nnU-Net's torch
    resampling on the network's device for the scan too: the fastest, but its label maps miss the bar);
    :mod:`cps3d.inference.fast`. With ``save_probabilities`` the export is nnU-Net's in all three. overwrite: predict
    cases whose
    output exists. part_id / num_parts: predict only every ``num_parts``-th case from ``part_id`` (sorted case ids).
    num_processes: worker processes for reading and for export (1: everything in this process). progress: show a
    progress bar.
    """

    folds: tuple[int | str, ...] | None = None
    checkpoint: str = DEFAULT_CHECKPOINT
    branch: str = "1"
    ensemble_average: str = "probabilities"
    step_size: float = PROTOCOLS["paper"]["step_size"]
    use_mirroring: bool = PROTOCOLS["paper"]["use_mirroring"]
    device: str | None = None
    forced_spacing: ForcedSpacing | None = None
    postprocess: bool = True
    postprocess_labels: tuple[int, ...] | None = None
    save_probabilities: bool = False
    export_mode: str = "low_memory"
    resampling: str = "torch-export"
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
        # imported here, not with the module: cps3d.inference.fast imports torch, and the CLI reads this class's
        # defaults for every command line's help
        from cps3d.inference.fast import check_resampling

        check_resampling(self.resampling)
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
    predict_seconds: float  # the network; on the torch path with the resampling to the plan spacing
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
