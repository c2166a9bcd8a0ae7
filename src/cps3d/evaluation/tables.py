"""Text tables of evaluation summaries: one summary (organs as rows, mean ± std) or two side by side."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from cps3d.evaluation.organs import flare_organ_for


def format_number(value: float | None, digits: int = 4, sign: bool = False) -> str:
    """``value`` with ``digits`` decimals (and its sign when ``sign``); ``-`` for a missing or non-finite value."""
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:{'+' if sign else ''}.{digits}f}"

__all__ = ["format_table", "compare_summaries"]


def _display_name(name: str, info: Mapping[str, Any]) -> str:
    if info.get("flare"):
        labels = info.get("labels") or []
        organ = flare_organ_for(labels[0], None) if len(labels) == 1 else None
        if organ is not None:
            return organ.short
    return name


def format_table(summary: Mapping[str, Any], digits: int = 4) -> str:
    """Organs as rows, ``DSC`` and ``NSD`` columns as ``mean ± std`` (fractions), and a ``mean`` row.

    FLARE organs are shown by the short names of FLARE's script and the 3D-CPS paper (Liver, RK, ..., LK).
    """
    per = summary["per_target"]
    rows = [(_display_name(n, v), f"{v['DSC_mean']:.{digits}f} ± {v['DSC_std']:.{digits}f}",
             f"{v['NSD_mean']:.{digits}f} ± {v['NSD_std']:.{digits}f}") for n, v in per.items()]
    m = summary["mean"]
    rows.append(("mean", f"{m['DSC_mean']:.{digits}f} ± {m['DSC_std']:.{digits}f}",
                 f"{m['NSD_mean']:.{digits}f} ± {m['NSD_std']:.{digits}f}"))
    header = (f"organ ({summary.get('num_cases', '?')} cases)", "DSC", "NSD")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    lines = [f"{header[0]:<{widths[0]}}  {header[1]:>{widths[1]}}  {header[2]:>{widths[2]}}",
             "-" * (widths[0] + widths[1] + widths[2] + 4)]
    for i, r in enumerate(rows):
        if i == len(rows) - 1:
            lines.append("-" * (widths[0] + widths[1] + widths[2] + 4))
        lines.append(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}")
    return "\n".join(lines)


def compare_summaries(a: Mapping[str, Any], b: Mapping[str, Any], name_a: str = "A", name_b: str = "B",
                      digits: int = 4) -> str:
    """Two summaries side by side: per organ, DSC and NSD means of A and B and the difference B - A.

    Organs are matched by name; an organ in only one summary shows '-' for the other and no difference.
    """
    pa, pb = a["per_target"], b["per_target"]
    names = list(pa) + [n for n in pb if n not in pa]

    def cell(d: Mapping | None, key: str) -> str:
        return format_number(None if d is None else d[key], digits)

    def diff(x: Mapping | None, y: Mapping | None, key: str) -> str:
        return format_number(None if x is None or y is None else y[key] - x[key], digits, sign=True)

    header = ["organ", f"DSC {name_a}", f"DSC {name_b}", "dDSC", f"NSD {name_a}", f"NSD {name_b}", "dNSD"]
    rows = []
    for n in names:
        x, y = pa.get(n), pb.get(n)
        label = _display_name(n, x or y)
        rows.append([label, cell(x, "DSC_mean"), cell(y, "DSC_mean"), diff(x, y, "DSC_mean"),
                     cell(x, "NSD_mean"), cell(y, "NSD_mean"), diff(x, y, "NSD_mean")])
    ma, mb = a["mean"], b["mean"]
    rows.append(["mean", cell(ma, "DSC_mean"), cell(mb, "DSC_mean"), diff(ma, mb, "DSC_mean"),
                 cell(ma, "NSD_mean"), cell(mb, "NSD_mean"), diff(ma, mb, "NSD_mean")])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(r: Sequence[str]) -> str:
        return "  ".join([f"{r[0]:<{widths[0]}}"] + [f"{c:>{w}}" for c, w in zip(r[1:], widths[1:])])

    sep = "-" * (sum(widths) + 2 * (len(widths) - 1))
    out = [f"A = {name_a}, B = {name_b} (differences are B - A)", line(header), sep]
    out += [line(r) for r in rows[:-1]] + [sep, line(rows[-1])]
    return "\n".join(out)

