"""The FLARE 2022 organ table: label numbers, names, the short names of FLARE's tables, NSD tolerances.

The one copy of FLARE's label numbering in cps3d: the phantom generator writes its ``dataset.json`` labels from it
and the evaluation decides from it which labels are FLARE organs (and with which tolerance).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["FlareOrgan", "FLARE_ORGANS", "FLARE_LABELS", "FLARE_SLICE_RANGE_LABELS", "flare_organ_for", "norm_name"]


@dataclass(frozen=True)
class FlareOrgan:
    number: int
    name: str  # as in FLARE 2022's dataset.json
    short: str  # as in FLARE's evaluation script and the 3D-CPS paper's tables
    tolerance_mm: float
    aliases: tuple[str, ...] = ()


FLARE_ORGANS: tuple[FlareOrgan, ...] = (
    FlareOrgan(1, "liver", "Liver", 5.0),
    FlareOrgan(2, "right kidney", "RK", 3.0, ("kidney right", "rk", "r kidney")),
    FlareOrgan(3, "spleen", "Spleen", 3.0),
    FlareOrgan(4, "pancreas", "Pancreas", 5.0),
    FlareOrgan(5, "aorta", "Aorta", 2.0),
    FlareOrgan(6, "inferior vena cava", "IVC", 2.0, ("ivc", "postcava", "vena cava inferior")),
    FlareOrgan(7, "right adrenal gland", "RAG", 2.0, ("adrenal gland right", "rag", "right adrenal")),
    FlareOrgan(8, "left adrenal gland", "LAG", 2.0, ("adrenal gland left", "lag", "left adrenal")),
    FlareOrgan(9, "gallbladder", "Gallbladder", 2.0, ("gall bladder",)),
    FlareOrgan(10, "esophagus", "Esophagus", 3.0, ("oesophagus",)),
    FlareOrgan(11, "stomach", "Stomach", 5.0),
    FlareOrgan(12, "duodenum", "Duodenum", 7.0),
    FlareOrgan(13, "left kidney", "LK", 3.0, ("kidney left", "lk", "l kidney")),
)
FLARE_SLICE_RANGE_LABELS = (5, 6, 10)  # aorta, IVC, esophagus: scored on the reference's slices only
#: The ``labels`` of a FLARE 2022 ``dataset.json`` (nnU-Net style: names with underscores, background 0).
FLARE_LABELS: dict[str, int] = {"background": 0, **{o.name.replace(" ", "_"): o.number for o in FLARE_ORGANS}}
_FLARE_BY_NUMBER = {o.number: o for o in FLARE_ORGANS}


def norm_name(name: str) -> str:
    """Lower case, runs of anything but letters and digits as one space: "Right_Kidney" -> "right kidney"."""
    return " ".join(re.sub(r"[^a-z0-9]+", " ", name.lower()).split())


def flare_organ_for(number: int, name: str | None) -> FlareOrgan | None:
    """FLARE's organ numbered ``number`` if ``name`` (None: any name) is its name, short name or an alias."""
    organ = _FLARE_BY_NUMBER.get(number)
    if organ is None:
        return None
    if name is None:
        return organ
    n = norm_name(name)
    if n in {norm_name(organ.name), norm_name(organ.short), *(norm_name(a) for a in organ.aliases)}:
        return organ
    return None

