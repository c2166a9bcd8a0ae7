"""Dataset fingerprint with the intensity statistics that CT normalisation uses.

nnU-Net's fingerprint samples intensities from the labeled foreground only, so unlabeled scans cannot contribute.
The paper's fingerprint uses all voxels ("global") of labeled and unlabeled scans. Three modes:

- ``global`` (default, the paper's): voxels of every labeled and unlabeled image after nnU-Net's crop to the nonzero
  region. In CT, air dominates these voxels, so the 0.5 percentile sits near -1000 HU: the resulting clip window is
  logged and recorded.
- ``foreground``: nnU-Net's own statistics (labeled foreground voxels only), computed exactly as nnU-Net does.
- ``body``: voxels of labeled and unlabeled images above a threshold (default -500 HU), i.e. the body without air.

The geometric part (spacings, shapes after cropping, relative size after cropping) always comes from the labeled
cases, as in nnU-Net, and the result is written in nnU-Net's schema (``foreground_intensity_properties_per_channel``)
so that nnU-Net's planner and ``CTNormalization`` use it unchanged. cps3d's own settings go under the key ``cps3d``.
"""

from __future__ import annotations

import logging
import os
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cps3d.dataset import DatasetError, Problem, RawDataset
from cps3d.files import read_json, stat_digest, write_json
from cps3d.images import ImageFileError, verify_image
from cps3d.options import check_choice
from cps3d.parallel import imap_cases

log = logging.getLogger(__name__)

INTENSITY_MODES = ("global", "foreground", "body")
FINGERPRINT_FILE = "dataset_fingerprint.json"
# nnU-Net samples 10e7 foreground voxels in total over the labeled cases; we keep that budget for ``foreground``.
NNUNET_FOREGROUND_SAMPLES = 10e7
_PERCENTILES = (0.5, 50.0, 99.5)


@dataclass(frozen=True)
class FingerprintConfig:
    """How intensity statistics are collected.

    intensity_stats: one of ``global``, ``foreground``, ``body`` (see the module docstring).
    body_threshold_hu: for ``body``, voxels strictly above this value count (HU for CT).
    samples_total: voxels sampled over all cases for ``global``/``body``: each case contributes
        ``samples_total / number of cases`` voxels drawn uniformly (with replacement), or all its voxels if it has
        fewer. (``foreground`` uses nnU-Net's own budget and sampler, so that it reproduces nnU-Net exactly.)
    seed: seeds each case's sampler together with the case id, so results do not depend on process scheduling.
    """

    intensity_stats: str = "global"
    body_threshold_hu: float = -500.0
    samples_total: int = 10_000_000
    seed: int = 1234

    def __post_init__(self) -> None:
        check_choice("intensity_stats", self.intensity_stats, INTENSITY_MODES)
        if self.samples_total < 1000:
            raise ValueError(f"samples_total={self.samples_total}: must be at least 1000")


def _case_rng(seed: int, case_id: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(case_id.encode())])


@dataclass(frozen=True)
class CaseAnalysis:
    """What the fingerprint takes from one case (:func:`analyze_case`).

    shape_after_crop, spacing (array order, mm), relative_size_after_cropping: labeled cases only (else None).
    samples: one array of sampled intensities per channel (None: an unlabeled case in ``foreground`` mode); min, max:
    per channel, the exact extremes of the voxels the mode considers (None for a channel without such voxels, and
    the lists are empty in ``foreground`` mode, which takes nnU-Net's sampled extremes).
    """

    case: str
    labeled: bool
    samples: list[np.ndarray] | None
    shape_after_crop: list[int] | None = None
    spacing: list[float] | None = None
    relative_size_after_cropping: float | None = None
    min: list[float | None] = field(default_factory=list)
    max: list[float | None] = field(default_factory=list)


def analyze_case(case_id: str, image_files: list[str], label_file: str | None, reader_writer_class: type,
                 config: FingerprintConfig, num_samples: int, verify: bool = True) -> CaseAnalysis:
    """Read one case and return its geometry and sampled intensities per channel (:class:`CaseAnalysis`).

    ``verify``: read every file in full first (:func:`cps3d.images.verify_image`;
    nnU-Net's reader would take a truncated NIfTI's missing voxels and NaN for zeros); False only for files that
    just passed ``check_dataset``. Raises DatasetError naming the files that fail the verification.
    """
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
    from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero

    if verify:
        problems = []
        for f in [*image_files, *([label_file] if label_file is not None else [])]:
            try:
                verify_image(f)
            except FileNotFoundError:
                problems.append(Problem(f, "file not found"))
            except ImageFileError as e:
                problems.append(Problem(e.path, e.problem))
        if problems:
            raise DatasetError(problems)
    rw = reader_writer_class()
    try:
        images, props = rw.read_images(image_files)
        seg = rw.read_seg(label_file)[0] if label_file is not None else None
    except Exception as e:
        raise RuntimeError(f"case {case_id}: cannot read {image_files}{' / ' + label_file if label_file else ''}: {e}") from e
    data, seg_cropped, _ = crop_to_nonzero(images, seg)
    geometry: dict[str, Any] = {}
    if label_file is not None:
        geometry = {"shape_after_crop": [int(i) for i in data.shape[1:]],
                    "spacing": [float(i) for i in props["spacing"]],
                    "relative_size_after_cropping": float(np.prod(data.shape[1:]) / np.prod(images.shape[1:]))}
    if config.intensity_stats == "foreground":
        if label_file is None:
            return CaseAnalysis(case_id, False, None, **geometry)
        # exactly nnU-Net's sampling (its own seed and per-case sample count) so this mode reproduces nnU-Net
        found, _ = DatasetFingerprintExtractor.collect_foreground_intensities(seg_cropped, data,
                                                                              num_samples=num_samples)
        return CaseAnalysis(case_id, True, [np.asarray(s, dtype=np.float64) for s in found], **geometry)
    rng = _case_rng(config.seed, case_id)
    samples: list[np.ndarray] = []
    lows: list[float | None] = []
    highs: list[float | None] = []
    for c in range(data.shape[0]):
        voxels = data[c].ravel()
        if config.intensity_stats == "body":
            voxels = voxels[voxels > config.body_threshold_hu]
        if voxels.size == 0:
            samples.append(np.zeros(0, np.float32))
            lows.append(None)
            highs.append(None)
            continue
        if voxels.size <= num_samples:  # a small case contributes all its voxels
            samples.append(voxels.astype(np.float32))
        else:
            samples.append(voxels[rng.integers(0, voxels.size, size=num_samples)].astype(np.float32))
        lows.append(float(voxels.min()))
        highs.append(float(voxels.max()))
    return CaseAnalysis(case_id, label_file is not None, samples, min=lows, max=highs, **geometry)


def summarize_intensities(samples: np.ndarray) -> dict:
    """nnU-Net's intensity property keys for one channel's samples (plus exact min/max handled by the caller)."""
    samples = np.asarray(samples, dtype=np.float64)
    p005, median, p995 = np.percentile(samples, _PERCENTILES)
    return {
        "mean": float(np.mean(samples)),
        "median": float(median),
        "std": float(np.std(samples)),
        "min": float(np.min(samples)),
        "max": float(np.max(samples)),
        "percentile_99_5": float(p995),
        "percentile_00_5": float(p005),
    }


def input_content_key(ds: RawDataset, include_unlabeled: bool) -> str:
    """Hash of the names, sizes and modification times of the files a fingerprint reads."""
    files = [f for v in ds.labeled_cases().values() for f in (*v["images"], v["label"])]
    if include_unlabeled:
        files += [f for v in ds.unlabeled_cases().values() for f in v]
    return stat_digest((f, f) for f in sorted(files))


def compute_fingerprint(ds: RawDataset, config: FingerprintConfig = FingerprintConfig(), num_processes: int = 1,
                        progress: bool = True, verify: bool = True) -> dict:
    """Compute the fingerprint of ``ds`` (see the module docstring); nothing is written. ``verify``: see
    :func:`analyze_case`."""
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    labeled = ds.labeled_cases()
    if not labeled:
        raise ValueError(f"{ds.folder}: no labeled cases; the fingerprint needs imagesTr/ and labelsTr/")
    unlabeled = ds.unlabeled_cases() if config.intensity_stats != "foreground" else {}
    first_image = next(iter(labeled.values()))["images"][0]
    rw_class = determine_reader_writer_from_dataset_json(ds.dataset_json, first_image, verbose=False)
    if config.intensity_stats == "foreground":
        per_case = int(NNUNET_FOREGROUND_SAMPLES // len(labeled))
    else:
        per_case = max(1, config.samples_total // (len(labeled) + len(unlabeled)))
    work = [(k, v["images"], v["label"], rw_class, config, per_case, verify) for k, v in labeled.items()]
    work += [(k, v, None, rw_class, config, per_case, verify) for k, v in unlabeled.items()]
    results: list[CaseAnalysis | None] = [None] * len(work)
    problems: list[Problem] = []
    for i, r in imap_cases(analyze_case, work, num_processes, desc="Fingerprint", progress=progress):
        if isinstance(r, DatasetError):  # files that fail the verification: collect them all
            problems += r.problems
        elif isinstance(r, BaseException):
            raise r
        else:
            results[i] = r
    if problems:
        raise DatasetError(sorted(problems, key=lambda p: p.path))
    done = [r for r in results if r is not None]
    lab = [r for r in done if r.labeled]
    n_channels = ds.num_channels
    properties = {}
    for c in range(n_channels):
        samples = np.concatenate([r.samples[c] for r in done if r.samples is not None])
        if samples.size == 0:
            raise ValueError(f"{ds.name}: no voxels to compute intensity statistics for channel {c} "
                             f"(mode {config.intensity_stats!r})")
        stats = summarize_intensities(samples)
        if config.intensity_stats != "foreground":  # exact extremes instead of sampled ones
            stats["min"] = float(min(v for r in done if (v := r.min[c]) is not None))
            stats["max"] = float(max(v for r in done if (v := r.max[c]) is not None))
        properties[str(c)] = stats
    fingerprint = {
        "spacings": [r.spacing for r in lab],
        "shapes_after_crop": [r.shape_after_crop for r in lab],
        "foreground_intensity_properties_per_channel": properties,
        "median_relative_size_after_cropping": float(np.median([r.relative_size_after_cropping for r in lab])),
        "cps3d": {
            **asdict(config),
            "num_labeled": len(labeled),
            "num_unlabeled": len(unlabeled),
            "samples_per_case": per_case,
            "content_key": input_content_key(ds, include_unlabeled=config.intensity_stats != "foreground"),
        },
    }
    return fingerprint


def clip_windows(fingerprint: dict) -> dict[str, tuple[float, float]]:
    """The [0.5, 99.5] percentile window per channel that nnU-Net's CTNormalization clips to."""
    return {c: (p["percentile_00_5"], p["percentile_99_5"])
            for c, p in fingerprint["foreground_intensity_properties_per_channel"].items()}


def fingerprint_path(preprocessed_root: str | os.PathLike, dataset_name: str) -> Path:
    return Path(preprocessed_root) / dataset_name / FINGERPRINT_FILE


def ensure_fingerprint(ds: RawDataset, preprocessed_root: str | os.PathLike,
                       config: FingerprintConfig = FingerprintConfig(), num_processes: int = 1,
                       progress: bool = True, overwrite: bool = False, verify: bool = True) -> dict:
    """Return the fingerprint of ``ds``, computing and writing it (atomically) unless an up-to-date one exists.

    An existing fingerprint is reused when it was made with the same settings from the same files (names, sizes,
    modification times); otherwise it is recomputed and replaced. ``verify``: see :func:`analyze_case`.
    """
    path = fingerprint_path(preprocessed_root, ds.name)
    if path.is_file() and not overwrite:
        try:
            old = read_json(path)
        except ValueError:
            old = {}
        meta = old.get("cps3d", {})
        same = all(meta.get(k) == v for k, v in asdict(config).items())
        if same and meta.get("content_key") == input_content_key(ds, config.intensity_stats != "foreground"):
            log.info("Reusing the fingerprint in %s (same settings, same files)", path)
            return old
    fp = compute_fingerprint(ds, config, num_processes, progress, verify)
    write_json(path, fp)
    for c, (lo, hi) in clip_windows(fp).items():
        p = fp["foreground_intensity_properties_per_channel"][c]
        log.info("Fingerprint (%s intensities, channel %s): clip window [%.1f, %.1f], mean %.1f, std %.1f",
                 config.intensity_stats, c, lo, hi, p["mean"], p["std"])
    return fp
