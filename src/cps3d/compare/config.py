"""What a comparison trains: the methods, the shared optimizer settings and :class:`CompareConfig`.

``METHODS`` and ``OPTIMIZERS`` are the one place that ``cps3d compare`` and ``benchmarks/ssl_gain.py`` take them from;
the short-run optimizer itself is the demo's protocol constant (:mod:`cps3d.demo`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from cps3d.demo import SHORT_RUN_OPTIMIZER
from cps3d.options import closest
from cps3d.planning import DEFAULT_PLANS_NAME
from cps3d.training.config import TrainConfig

_DEFAULT = TrainConfig()
# the methods compared: TrainConfig fields on top of the shared settings (schedule and optimizer); the paper's cross
# terms are TrainConfig's defaults (and the demo's); ``cps`` is the cross-entropy variant on confident pseudo-labels
# (the demo's until 7 seeds on 20 validation phantoms chose the paper's), kept so that its figures stay reproducible
METHODS: dict[str, dict[str, Any]] = {
    "baseline": {"mode": "supervised"},
    "cps-paper": {"mode": "cps", "cps_loss": _DEFAULT.cps_loss, "confidence": _DEFAULT.confidence},
    "cps": {"mode": "cps", "cps_loss": "ce", "confidence": 0.95},
}
# SGD settings shared by every method: the demo's for runs of minutes, nnU-Net's (TrainConfig's defaults) otherwise
OPTIMIZERS: dict[str, dict[str, float]] = {
    "short": dict(SHORT_RUN_OPTIMIZER),
    "nnunet": {"initial_lr": _DEFAULT.initial_lr, "momentum": _DEFAULT.momentum},
}
# which held-out cases are scored: the test set, the validation cases (to choose settings), or the labeled cases of
# another dataset folder (``CompareConfig.extra``: more validation cases, in no fingerprint and no split)
EVALUATE = ("test", "val", "extra")
_TRAIN_FIELDS = frozenset(f.name for f in fields(TrainConfig))
# set per run by the comparison itself, not by a method or the shared settings
_PER_RUN = frozenset({"seed", "mode"})


def train_seed(seed: int) -> int:
    """The TrainConfig seed of every method's run for comparison seed ``seed`` (the same for all methods, so that the
    baseline and network 1 of CPS start from the same weights)."""
    return 1000 + 10 * seed


def parse_method(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME:key=value,key=value`` (TrainConfig fields, values read as JSON where they can be) -> (NAME, fields) of
    a CPS variant (``mode`` is ``cps`` unless given). Raises ValueError naming the text for a missing name."""
    import json

    name, _, rest = text.partition(":")
    if not name:
        raise ValueError(f"method {text!r}: give it a name, as in NAME:key=value,...")
    overrides: dict[str, Any] = {"mode": "cps"}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"method {text!r}: {item!r} is not key=value")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return name, overrides


def _check_train_fields(what: str, values: Mapping[str, Any], forbidden: frozenset[str]) -> None:
    for key in values:
        if key in forbidden:
            raise ValueError(f"{what}: {key!r} is set by the comparison itself")
        if key not in _TRAIN_FIELDS:
            hint = closest(key, sorted(_TRAIN_FIELDS))
            raise ValueError(f"{what}: {key!r} is not a training option" + (f" (did you mean {hint!r}?)" if hint
                                                                               else ""))


@dataclass(frozen=True)
class CompareConfig:
    """The settings of a CPS-versus-baseline comparison.

    labeled: labeled training counts (nested random subsets of the training cases per seed); None: every training
        case. seeds: comparison seeds; each picks its own subsets and initialises every method's networks alike.
    methods: {name: TrainConfig fields}; exactly one with ``mode`` supervised (the baseline every CPS method is
        paired with) and at least one CPS method. train: TrainConfig fields shared by every method (epochs,
        iterations, optimizer...; ``final_validation`` is off unless set: the comparison scores its own held-out
        cases); ``seed`` and ``mode`` are set per run.
    max_minutes: each CPS run stops after the epoch in which this much training time passed; the baseline of the
        same labeled cases then trains as many epochs as the shortest of them (equal iterations). None: no limit.
    evaluate: the held-out cases scored, ``test``, ``val`` and/or ``extra`` (the first one is reported).
    extra: a raw dataset folder with the same labels whose labeled cases (imagesTr/labelsTr) are scored as ``extra``:
        validation cases drawn apart from the dataset, so that choosing settings needs no cases taken from training
        or from the fingerprint. Required by ``extra`` in ``evaluate``, and only used there.
    device: ``cpu``, ``cuda`` or None (CUDA when available). jobs: runs trained at once (separate processes when > 1);
        threads: torch threads per run (None: 1 when ``jobs`` > 1, else torch's default).
    keep: keep each run's model and predictions (False: delete them once the run is scored).
    bootstrap: resamples of the paired bootstrap; bootstrap_seed: its generator's seed; level: the interval's coverage.
    """

    labeled: tuple[int, ...] | None = None
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: Mapping[str, Mapping[str, Any]] = field(
        default_factory=lambda: {m: METHODS[m] for m in ("baseline", "cps-paper")})
    train: Mapping[str, Any] = field(default_factory=dict)
    max_minutes: float | None = None
    evaluate: tuple[str, ...] = ("test",)
    extra: str | None = None
    configuration: str = "3d_fullres"
    plans_name: str = DEFAULT_PLANS_NAME
    device: str | None = None
    jobs: int = 1
    threads: int | None = None
    keep: bool = True
    bootstrap: int = 10000
    bootstrap_seed: int = 0
    level: float = 0.95
    progress: bool = True

    def __post_init__(self) -> None:
        if self.labeled is not None:
            if not self.labeled:
                raise ValueError("labeled: give at least one labeled count (or None for every training case)")
            bad = [k for k in self.labeled if not isinstance(k, int) or k < 1]
            if bad:
                raise ValueError(f"labeled={list(self.labeled)}: counts must be whole numbers >= 1")
            if len(set(self.labeled)) != len(self.labeled):
                raise ValueError(f"labeled={list(self.labeled)}: a count is repeated")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or any(s < 0 for s in self.seeds):
            raise ValueError(f"seeds={list(self.seeds)}: give one or more distinct seeds >= 0")
        _check_train_fields("train", self.train, _PER_RUN)
        modes = {}
        for name, overrides in self.methods.items():
            _check_train_fields(f"method {name!r}", overrides, frozenset({"seed"}))
            try:
                modes[name] = TrainConfig(**{**self.train, **overrides}).mode
            except (TypeError, ValueError) as e:
                raise ValueError(f"method {name!r}: {e}") from e
        supervised = [m for m, mode in modes.items() if mode == "supervised"]
        if len(supervised) != 1 or len(modes) < 2:
            raise ValueError(f"methods {sorted(self.methods)}: need exactly one supervised baseline (mode "
                             f"'supervised') and at least one CPS method; the baseline(s) given: {supervised}")
        if self.max_minutes is not None and not (math.isfinite(self.max_minutes) and self.max_minutes > 0):
            raise ValueError(f"max_minutes={self.max_minutes}: must be a positive number of minutes")
        if not self.evaluate or any(e not in EVALUATE for e in self.evaluate) or len(set(self.evaluate)) != len(
                self.evaluate):
            raise ValueError(f"evaluate={list(self.evaluate)}: choose from {', '.join(EVALUATE)}, each once")
        if ("extra" in self.evaluate) != (self.extra is not None):
            raise ValueError("evaluate 'extra' scores the labeled cases of another dataset folder: give both the "
                             f"folder (extra={self.extra!r}) and 'extra' in evaluate={list(self.evaluate)}, or neither")
        if self.device not in (None, "cpu", "cuda"):
            raise ValueError(f"device={self.device!r}: choose cpu or cuda")
        if self.jobs < 1 or (self.threads is not None and self.threads < 1):
            raise ValueError(f"jobs={self.jobs}, threads={self.threads}: each must be at least 1")
        if self.bootstrap < 100:
            raise ValueError(f"bootstrap={self.bootstrap}: use at least 100 resamples")
        if not 0 < self.level < 1:
            raise ValueError(f"level={self.level}: the interval's coverage must lie in (0, 1), e.g. 0.95")

    @property
    def baseline(self) -> str:
        """The name of the supervised method."""
        return next(m for m, o in self.methods.items() if {**self.train, **o}.get("mode", "cps") == "supervised")

    def run_config(self, method: str, seed: int) -> dict[str, Any]:
        """The TrainConfig fields of ``method``'s run for comparison seed ``seed``."""
        return {"final_validation": False, **self.train, "seed": train_seed(seed), **self.methods[method]}

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (dict(getattr(self, f.name)) if isinstance(getattr(self, f.name), Mapping)
                         else getattr(self, f.name)) for f in fields(self)}
