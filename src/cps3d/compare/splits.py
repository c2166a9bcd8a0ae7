"""Which cases train, which are held out: the declared split, nested labeled subsets and the training folds.

A :class:`Split` divides a dataset's labeled cases into the training ``pool`` (the labeled subsets are drawn from it),
``validation`` cases (never train, never tested; settings are chosen on them) and the ``test`` cases (never train):
``imagesTs``/``labelsTs`` when the dataset has labeled test cases, otherwise a seeded random part of ``labelsTr``. It
is written to the comparison's folder (``split.json``) so that it can be reused. Unlabeled scans
(``imagesUnlabeled/``) are never part of a split: every CPS run trains on all of them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cps3d.files import read_json, write_json

TEST_SOURCES = ("imagesTs", "labelsTr")
HOLDOUT_SHARE = 0.2  # of the labeled cases, held out as the test set when the dataset has no labelsTs/


@dataclass(frozen=True)
class Split:
    """``pool``: the training cases the labeled subsets come from; ``validation``: labeled cases that never train
    and are not the test set; ``test``: the evaluated cases; ``test_source``: ``imagesTs`` (the dataset's labeled test
    cases) or ``labelsTr`` (held out from the labeled cases)."""

    pool: tuple[str, ...]
    validation: tuple[str, ...]
    test: tuple[str, ...]
    test_source: str = "imagesTs"

    def __post_init__(self) -> None:
        if self.test_source not in TEST_SOURCES:
            raise ValueError(f"test_source={self.test_source!r}: choose one of {', '.join(TEST_SOURCES)}")
        if not self.pool:
            raise ValueError("the split has no training cases (pool)")
        if not self.test:
            raise ValueError("the split has no test cases")
        for name, ids in (("pool", self.pool), ("validation", self.validation), ("test", self.test)):
            if len(set(ids)) != len(ids):
                raise ValueError(f"the split's {name} lists a case twice")
        groups = {"pool": set(self.pool), "validation": set(self.validation)}
        if self.test_source == "labelsTr":
            groups["test"] = set(self.test)
        names = list(groups)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                both = sorted(groups[a] & groups[b])
                if both:
                    raise ValueError(f"the split's {a} and {b} cases overlap: {', '.join(both[:10])}")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Any, where: str = "split") -> Split:
        keys = {"pool", "validation", "test", "test_source"}
        if not isinstance(d, dict) or not {"pool", "test"} <= set(d) or set(d) - keys:
            raise ValueError(f"{where}: expected {{\"pool\": [...], \"validation\": [...], \"test\": [...], "
                             "\"test_source\": \"imagesTs\" or \"labelsTr\"}")
        try:
            return cls(tuple(map(str, d["pool"])), tuple(map(str, d.get("validation", []))),
                       tuple(map(str, d["test"])), d.get("test_source", "imagesTs"))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: {e}") from e

    def save(self, path: str | os.PathLike) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Split:
        return cls.from_dict(read_json(path), str(path))


def check_unlabeled(ds) -> None:
    """Refuse a dataset without unlabeled scans: CPS would have nothing to learn from that the baseline lacks."""
    if not ds.unlabeled_cases():
        raise ValueError(f"{ds.folder / 'imagesUnlabeled'}: no unlabeled scans; CPS learns from scans in "
                         "imagesUnlabeled/ (named like imagesTr/), and without them the comparison has nothing to show")


def declare_split(ds, holdout: int | None = None, validation: int = 0, seed: int = 0) -> Split:
    """The split of raw dataset ``ds`` (a :class:`cps3d.dataset.RawDataset`).

    Test cases: the labeled cases of ``imagesTs``/``labelsTs`` if there are any (``holdout`` must then be None),
    otherwise ``holdout`` labeled cases (default: a fifth, at least one) drawn with ``seed``; ``validation`` further
    labeled cases are drawn after them; the rest is the pool. Raises ValueError naming the problem: no unlabeled
    scans, or too few labeled cases to hold out a test set and still train.
    """
    check_unlabeled(ds)
    labeled = sorted(ds.labeled_cases())
    tests = sorted(c for c, v in ds.test_cases().items() if v["label"] is not None)
    if validation < 0:
        raise ValueError(f"validation={validation}: must be >= 0")
    if tests:
        if holdout is not None:
            raise ValueError(f"{ds.folder}: has {len(tests)} labeled test case(s) in imagesTs/ + labelsTs/, which are "
                             "the test set; a held-out count applies only to datasets without them")
        n_test, source = 0, "imagesTs"
    else:
        n_test = holdout if holdout is not None else max(1, round(HOLDOUT_SHARE * len(labeled)))
        if n_test < 1:
            raise ValueError(f"holdout={holdout}: hold out at least one test case")
        source = "labelsTr"
    if len(labeled) < n_test + validation + 1:
        where = ds.folder / "labelsTr"
        held = f"{n_test} test case(s)" if source == "labelsTr" else "no test case"
        raise ValueError(f"{where}: {len(labeled)} labeled case(s) are too few to hold out {held} and {validation} "
                         f"validation case(s) and still train on one"
                         + ("; the dataset has no labeled test cases (imagesTs/ + labelsTs/), so the test set must "
                            "come from labelsTr/: label more cases or add a labeled test set" if source == "labelsTr"
                            else ""))
    order = [labeled[i] for i in np.random.default_rng(seed).permutation(len(labeled))]
    test = sorted(order[:n_test]) if source == "labelsTr" else tests
    val = sorted(order[n_test:n_test + validation])
    pool = sorted(order[n_test + validation:])
    return Split(tuple(pool), tuple(val), tuple(test), source)


def check_split(split: Split, ds, where: str = "split") -> None:
    """Refuse a split whose cases the dataset does not have (training and validation cases must be labeled cases,
    test cases labeled cases of their source)."""
    labeled = set(ds.labeled_cases())
    tests = {c for c, v in ds.test_cases().items() if v["label"] is not None}
    source = labeled if split.test_source == "labelsTr" else tests
    for name, ids, have in (("pool", split.pool, labeled), ("validation", split.validation, labeled),
                            ("test", split.test, source)):
        missing = sorted(set(ids) - have)
        if missing:
            folder = "labelsTs" if name == "test" and split.test_source == "imagesTs" else "labelsTr"
            raise ValueError(f"{where}: {len(missing)} {name} case(s) not among the labeled cases of "
                             f"{ds.folder / folder}: {', '.join(missing[:10])}")


def nested_subsets(pool: Sequence[str], counts: Sequence[int], seeds: Sequence[int]) -> dict[tuple[int, int], list[str]]:
    """``{(count, seed): cases}``: for each seed the first ``count`` cases of a seeded random order of ``pool``, so
    that each seed's smaller subsets lie inside its larger ones. Raises ValueError for a count larger than the pool."""
    too_many = [k for k in counts if k > len(pool)]
    if too_many:
        raise ValueError(f"labeled count {max(too_many)} is larger than the training set: {len(pool)} labeled "
                         "case(s) remain after the held-out test and validation cases")
    out = {}
    for seed in seeds:
        order = [pool[i] for i in np.random.default_rng(seed).permutation(len(pool))]
        for k in counts:
            out[(k, seed)] = order[:k]
    return out


def training_folds(split: Split, subsets: dict[tuple[int, int], list[str]], counts: Sequence[int],
                   seeds: Sequence[int]) -> tuple[dict[tuple[int, int], int], list[dict[str, list[str]]]]:
    """The folds of ``splits_final.json``: ``({(count, seed): fold}, [{"train": [...], "val": [...]}, ...])`` in the
    order seed, then count. ``val`` is the validation cases (the training cases themselves when there are none, as
    nnU-Net's fold "all" does): it only feeds the per-epoch validation loss, never a choice."""
    folds: dict[tuple[int, int], int] = {}
    splits: list[dict[str, list[str]]] = []
    for seed in seeds:
        for k in counts:
            folds[(k, seed)] = len(splits)
            train = subsets[(k, seed)]
            splits.append({"train": list(train), "val": list(split.validation) or list(train)})
    return folds, splits


def linked_preprocessed(source_root: str | os.PathLike, dataset: str, target_root: str | os.PathLike,
                        splits: list[dict[str, list[str]]]) -> Path:
    """``target_root/dataset``: every entry of the preprocessed dataset folder linked, plus the comparison's own
    ``splits_final.json``.

    nnU-Net's trainer reads its folds from ``<preprocessed>/<dataset>/splits_final.json``; linking keeps the user's
    own splits file untouched and the preprocessed data in one place. Returns ``target_root``.
    """
    source = Path(source_root) / dataset
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: no preprocessed dataset; run 'cps3d plan' and 'cps3d preprocess' first")
    target = Path(target_root) / dataset
    target.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        if entry.name == "splits_final.json":
            continue
        link = target / entry.name
        if link.is_symlink() and Path(os.readlink(link)) == entry.resolve():
            continue
        if link.is_symlink() or link.is_file():
            link.unlink()
        link.symlink_to(entry.resolve(), target_is_directory=entry.is_dir())
    write_json(target / "splits_final.json", splits)
    return Path(target_root)
