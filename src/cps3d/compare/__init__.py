"""Does CPS help on my data? A seeded CPS-versus-supervised comparison on any planned nnU-Net dataset.

- :mod:`cps3d.compare.config`: the methods, the shared optimizers and :class:`CompareConfig`;
- :mod:`cps3d.compare.splits`: the held-out split, nested labeled subsets, the training folds;
- :mod:`cps3d.compare.runs`: one resumable run per (labeled count, seed, method);
- :mod:`cps3d.compare.stats`: spread over seeds, the paired per-case difference and its bootstrap interval;
- :mod:`cps3d.compare.report`: JSON, CSV, Markdown and the figure;
- :func:`run_compare` (:mod:`cps3d.compare.pipeline`): all of it; ``cps3d compare`` is its command.
"""

from cps3d.compare.config import METHODS, OPTIMIZERS, CompareConfig, parse_method, train_seed
from cps3d.compare.pipeline import CompareResult, run_compare
from cps3d.compare.splits import Split, declare_split, nested_subsets
from cps3d.compare.stats import bootstrap_interval, paired_differences, paired_summary

__all__ = [
    "METHODS",
    "OPTIMIZERS",
    "CompareConfig",
    "CompareResult",
    "Split",
    "bootstrap_interval",
    "declare_split",
    "nested_subsets",
    "paired_differences",
    "paired_summary",
    "parse_method",
    "run_compare",
    "train_seed",
]
