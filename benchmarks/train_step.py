"""Benchmark: one CPS training iteration against one supervised nnU-Net iteration with the same plans, patch and
batch per network.

- supervised: stock nnU-Net, ``nnUNetTrainer.train_step`` (one network, B labeled patches);
- cps: ``cps3d.training.trainer.CPSTrainer.train_step`` (two networks, each on B labeled + B unlabeled patches: four
  times the sample-passes of the supervised step).

The network step (forward, loss, backward, gradient clipping, optimizer step) is timed on fixed tensors already on
the device: one batch is drawn from the loaders and reused, and CPS's unlabeled loader is replaced by that one fixed
batch. Data loading with augmentation is timed apart from it: ``next()`` on nnU-Net's training loader and on our
unlabeled loader, alternately, in the worker's own process (``nnUNet_n_proc_DA=0``: one batch's CPU cost).

Every measurement runs in a fresh Python process, alternating supervised, CPS, supervised, CPS, ...; the tables give
medians over runs and the CPS / supervised ratios against the targets (time <= 4.2x, memory <= 2.5x). Peak memory of
the step: on CPU, the growth of the process's peak resident set (``getrusage`` max RSS) above its resident set just
before the first step; on CUDA, ``torch.cuda.max_memory_allocated`` above what was allocated before the first step
(the totals are in the JSON). A breakdown (forward, loss, optimizer step, and the rest: backward, gradient clipping,
pseudo-labels) comes from module and optimizer hooks on a few extra steps, and a batch-scaling check times one
network's forward + backward on B and on 2B samples (CPSTrainer runs each network on the labeled batch and then on
the unlabeled batch, one backward pass each, rather than once on both concatenated: on a CPU, 2B samples in one pass
cost more than two passes of B); ``--profile`` adds torch.profiler's top operators. AMP is on
for both on CUDA (nnU-Net's default), off on CPU; on CPU each process uses one torch thread unless ``--threads``
says otherwise (on a shared machine, other jobs make multi-threaded timings erratic).

Data: phantoms (``cps3d.phantoms``) planned with nnU-Net's ResEnc-M planner plus the size overrides below, then
preprocessed by cps3d, in a temporary folder (or ``--work-dir``, reused by later runs).

    python benchmarks/train_step.py                      # CPU default: patch 32x64x64, 4 stages, 16 features, batch 2
    python benchmarks/train_step.py --device cuda --paper-size --phantom-size medium --json train_step.json
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    NOISE_NOTE,
    fmt,
    machine_info,
    machine_line,
    markdown_table,
    median,
    prepare_phantom_dataset,
    publish,
    ratio,
    rss_mb,
    run_worker,
    save_json,
)

TIME_TARGET = 4.2
MEMORY_TARGET = 2.5
CONFIGURATION = "3d_fullres"
PAPER = dict(patch=(112, 160, 128), batch=2, n_stages=6, base_features=32, max_features=320)
DEFAULT = dict(patch=(32, 64, 64), batch=2, n_stages=4, base_features=16, max_features=128)
VARIANTS = ("supervised", "cps")
DEFAULT_VARIANTS = ("supervised", "cps")
LABELS = {"supervised": "nnU-Net supervised (1 network, B labeled)",
          "cps": "CPS (2 networks, B labeled + B unlabeled)"}


# ---------------------------------------------------------------------------------------------------- worker side
def _mb(n_bytes: float) -> float:
    return n_bytes / 2**20


def _max_rss_bytes() -> int:
    """Peak resident set of this process so far (getrusage reports KiB on Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _build_trainer(spec: dict, variant: str):
    """A stock nnUNetTrainer or a CPSTrainer on the benchmark's plans, initialised, with its loaders."""
    import numpy as np
    import torch

    from cps3d.files import read_json
    from cps3d.nnunet_env import nnunet_folders
    from cps3d.planning import load_plans

    pre = Path(spec["preprocessed_root"])
    device = torch.device(spec["device"])
    if variant == "supervised":
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

        plans = load_plans(pre, spec["dataset_name"])
        plans["continue_training"] = False  # nnU-Net's trainer pops this key
        dataset_json = read_json(pre / spec["dataset_name"] / "dataset.json")
        with nnunet_folders(preprocessed=pre, results=spec["results_root"]):
            trainer = nnUNetTrainer(plans, CONFIGURATION, "all", dataset_json, device)
            trainer.initialize()
            np.random.seed(spec["seed"])  # nnU-Net's loaders draw from the global generators
            torch.manual_seed(spec["seed"])
            trainer.dataloader_train, trainer.dataloader_val = trainer.get_dataloaders()
    else:
        from cps3d.training.config import TrainConfig
        from cps3d.training.run import build_trainer

        trainer = build_trainer(spec["dataset_name"], pre, spec["results_root"], CONFIGURATION, "all",
                                TrainConfig(mode="cps", seed=spec["seed"]), device=device, show_progress=False)
        with nnunet_folders(preprocessed=pre, results=spec["results_root"]):
            trainer.dataloader_train, trainer.dataloader_val = trainer.get_dataloaders()
    return trainer


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _PhaseTimer:
    """Wall time spent inside hooked modules and optimizer steps (summed per phase)."""

    def __init__(self, device) -> None:
        self.device = device
        self.totals: dict[str, float] = {}
        self._start: dict[str, float] = {}
        self.handles: list = []

    def _begin(self, phase: str) -> None:
        _sync(self.device)
        self._start[phase] = time.perf_counter()

    def _end(self, phase: str) -> None:
        _sync(self.device)
        self.totals[phase] = self.totals.get(phase, 0.0) + time.perf_counter() - self._start.pop(phase)

    def module(self, module, phase: str) -> None:
        self.handles.append(module.register_forward_pre_hook(lambda *a: self._begin(phase)))
        self.handles.append(module.register_forward_hook(lambda *a: self._end(phase)))

    def optimizer(self, optimizer, phase: str) -> None:
        self.handles.append(optimizer.register_step_pre_hook(lambda *a: self._begin(phase)))
        self.handles.append(optimizer.register_step_post_hook(lambda *a: self._end(phase)))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _batch_scaling(net, x, device, repeats: int) -> dict:
    """Time one network's forward + backward (mean of its outputs, no optimizer) on the batch ``x`` (B samples) and
    on it twice over (2B), alternately: how the cost grows with the batch on this device (CPSTrainer runs two passes
    of B per network rather than one of 2B)."""
    import torch

    x2 = torch.cat([x, x])

    def fwd_bwd(inp) -> float:
        _sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            outs = net(inp)
            outs = [outs] if torch.is_tensor(outs) else list(outs)
            loss = sum(o.float().mean() for o in outs)
        loss.backward()
        net.zero_grad(set_to_none=True)
        _sync(device)
        return time.perf_counter() - t0

    fwd_bwd(x2)  # first use of the larger batch (cuDNN picks its algorithms)
    times: dict[str, list[float]] = {"B": [], "2B": []}
    for _ in range(repeats):
        times["B"].append(fwd_bwd(x))
        times["2B"].append(fwd_bwd(x2))
    return times


def _step_worker(spec: dict) -> dict:
    """Time ``train_step`` of one variant on a fixed batch; peak memory; breakdown; optional profile."""
    import torch

    device = torch.device(spec["device"])
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as nnU-Net's run_training does
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    variant = spec["variant"]
    trainer = _build_trainer(spec, variant)
    batch = next(trainer.dataloader_train)
    target = batch["target"] if isinstance(batch["target"], list) else [batch["target"]]
    fixed = {"data": batch["data"].to(device), "target": [t.to(device) for t in target]}
    shapes = {"labeled": list(fixed["data"].shape)}
    if variant != "supervised":
        # the loss terms are computed at any lambda; lambda_max runs the unlabeled backward too
        x_u = trainer.repeat_unlabeled(next(trainer.dataloader_unlabeled)["data"].to(device))
        shapes["unlabeled"] = list(x_u.shape)
        networks, optimizers = trainer.networks, trainer.optimizers
    else:
        networks, optimizers = [trainer.network], [trainer.optimizer]
    trainer.dataloader_train = trainer.dataloader_val = None
    for net in networks:
        net.train()
    n_params = [sum(p.numel() for p in net.parameters()) for net in networks]

    train_step = trainer.train_step

    def step() -> float:
        _sync(device)
        t0 = time.perf_counter()
        train_step(fixed)
        _sync(device)
        return time.perf_counter() - t0

    out: dict = {"variant": variant, "shapes": shapes, "n_params": n_params}
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        out["cuda_allocated_before_mb"] = _mb(torch.cuda.memory_allocated(device))
    out["rss_before_mb"] = rss_mb()
    out["max_rss_before_mb"] = _mb(_max_rss_bytes())
    out["warmup_s"] = [step() for _ in range(spec["warmup"])]
    out["step_s"] = [step() for _ in range(spec["steps"])]
    out["max_rss_after_mb"] = _mb(_max_rss_bytes())
    out["rss_peak_growth_mb"] = out["max_rss_after_mb"] - out["rss_before_mb"]
    # the peak belongs to the steps only if they raised it; otherwise the growth is a lower bound
    out["rss_peak_is_lower_bound"] = out["max_rss_after_mb"] <= out["max_rss_before_mb"]
    if device.type == "cuda":
        out["cuda_peak_allocated_mb"] = _mb(torch.cuda.max_memory_allocated(device))
        out["cuda_peak_reserved_mb"] = _mb(torch.cuda.max_memory_reserved(device))
        out["cuda_peak_growth_mb"] = out["cuda_peak_allocated_mb"] - out["cuda_allocated_before_mb"]
    out["peak_growth_mb"] = out["cuda_peak_growth_mb"] if device.type == "cuda" else out["rss_peak_growth_mb"]

    if spec["breakdown_steps"]:
        timer = _PhaseTimer(device)
        for net in networks:
            timer.module(net, "forward")
        timer.module(trainer.loss, "loss")
        for opt in optimizers:
            timer.optimizer(opt, "optimizer step")
        totals = []
        for _ in range(spec["breakdown_steps"]):
            totals.append(step())
        timer.remove()
        n = spec["breakdown_steps"]
        phases = {k: v / n for k, v in timer.totals.items()}
        phases["rest (backward, clipping, pseudo-labels)"] = sum(totals) / n - sum(phases.values())
        out["breakdown_s"] = phases

    if variant == "supervised" and spec["breakdown_steps"]:
        out["batch_scaling"] = _batch_scaling(networks[0], fixed["data"], device, max(2, spec["breakdown_steps"]))

    if spec["profile"]:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            for _ in range(2):
                step()
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        out["profile"] = prof.key_averages().table(sort_by=sort, row_limit=15)
    return out


def _loader_worker(spec: dict) -> dict:
    """Alternately time ``next()`` on nnU-Net's training loader and on cps3d's unlabeled loader."""
    if spec.get("threads"):
        import torch

        torch.set_num_threads(spec["threads"])
    labeled = _build_trainer(spec, "supervised").dataloader_train
    cps = _build_trainer(spec, "cps")
    unlabeled = cps.dataloader_unlabeled
    next(labeled)  # one untimed batch each: first reads of the files
    next(unlabeled)
    lab, unl = [], []
    for _ in range(spec["loader_batches"]):
        t0 = time.perf_counter()
        next(labeled)
        t1 = time.perf_counter()
        next(unlabeled)
        t2 = time.perf_counter()
        lab.append(t1 - t0)
        unl.append(t2 - t1)
    return {"variant": "loaders", "labeled_s": lab, "unlabeled_s": unl,
            "labeled_batch": cps.batch_size, "unlabeled_batch": cps.unlabeled_batch_size}


def worker_main(spec_file: str) -> int:
    import contextlib
    import json

    spec = json.loads(Path(spec_file).read_text())
    # nnU-Net prints to stdout; the parent shows a worker's output only when it fails
    with contextlib.redirect_stdout(sys.stderr):
        result = _loader_worker(spec) if spec["variant"] == "loaders" else _step_worker(spec)
    Path(spec["result_file"]).write_text(json.dumps(result))
    return 0


# ---------------------------------------------------------------------------------------------------- main side
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--patch", type=int, nargs=3, metavar=("Z", "Y", "X"),
                   help=f"patch size in voxels (default {DEFAULT['patch']})")
    p.add_argument("--batch", type=int, help=f"labeled batch per network (default {DEFAULT['batch']})")
    p.add_argument("--unlabeled-batch", type=int, help="unlabeled batch per network (default: same as --batch)")
    p.add_argument("--n-stages", type=int, help=f"U-Net stages (default {DEFAULT['n_stages']})")
    p.add_argument("--base-features", type=int, help=f"features of the first stage (default {DEFAULT['base_features']})")
    p.add_argument("--max-features", type=int, help=f"feature cap (default {DEFAULT['max_features']})")
    p.add_argument("--paper-size", action="store_true",
                   help="the paper's 3D setting: patch 112x160x128, batch 2 + 2, ResEnc-M features 32..320, 6 stages "
                        "(meant for a GPU; explicit size flags still override it)")
    p.add_argument("--phantom-size", default="small", choices=("small", "medium", "full"),
                   help="phantom scans to sample patches from (default small)")
    p.add_argument("--labeled", type=int, default=4, help="labeled phantom cases (default 4)")
    p.add_argument("--unlabeled", type=int, default=4, help="unlabeled phantom cases (default 4)")
    p.add_argument("--repeats", type=int, default=3, help="runs per variant, alternating (default 3)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per run (default 2)")
    p.add_argument("--steps", type=int, default=4, help="timed steps per run (default 4)")
    p.add_argument("--breakdown-steps", type=int, default=1, help="extra steps timed by phase (default 1; 0: none)")
    p.add_argument("--loader-batches", type=int, default=8, help="timed batches per loader (default 8)")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(DEFAULT_VARIANTS),
                   help="what to time, in this order within each round (default: supervised cps)")
    p.add_argument("--threads", type=int,
                   help="torch threads per worker (default: 1 on CPU, where a shared machine's other jobs make "
                        "multi-threaded timings erratic; torch's default on CUDA)")
    p.add_argument("--profile", action="store_true", help="print torch.profiler's top operators of each variant")
    p.add_argument("--compile", action="store_true", help="let nnU-Net torch.compile the networks (CUDA only)")
    p.add_argument("--num-processes", type=int, default=min(2, os.cpu_count() or 1),
                   help="processes for phantoms, fingerprint and preprocessing (default min(2, cores))")
    p.add_argument("--work-dir", type=Path, help="keep data here and reuse it (default: a temporary folder)")
    p.add_argument("--plan-only", action="store_true", help="prepare data, print the plan and stop")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=1800, help="seconds allowed per worker process (default 1800)")
    p.add_argument("--json", type=Path, help="write the raw timings and settings here")
    args = p.parse_args(argv)
    base = PAPER if args.paper_size else DEFAULT
    for key in ("patch", "batch", "n_stages", "base_features", "max_features"):
        if getattr(args, key) is None:
            setattr(args, key, base[key])
    for key in ("batch", "n_stages", "base_features", "max_features", "labeled", "unlabeled", "repeats", "steps",
                "loader_batches", "num_processes"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be at least 1, got {getattr(args, key)}")
    for key in ("warmup", "breakdown_steps"):
        if getattr(args, key) < 0:
            p.error(f"--{key.replace('_', '-')} must be >= 0, got {getattr(args, key)}")
    if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
        p.error(f"--device {args.device!r}: use cpu or cuda")
    if "supervised" not in args.variants or len(args.variants) < 2 or len(set(args.variants)) != len(args.variants):
        p.error("--variants: name supervised and at least one CPS variant, each once")
    if args.threads is None and args.device == "cpu":
        args.threads = 1
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be at least 1, got {args.threads}")
    return args


def _summary(runs: list[dict], key: str) -> tuple[float, float, float]:
    """Median over runs of each run's median ``key``, and the smallest and largest run medians."""
    per_run = [median(r[key]) for r in runs]
    return median(per_run), min(per_run), max(per_run)


def report(result: dict) -> str:
    """The Markdown tables of one benchmark result (as written to --json)."""
    s = result["settings"]
    variants = s["variants"]
    cps_variants = [v for v in variants if v != "supervised"]
    runs = {v: [r for r in result["runs"] if r["variant"] == v] for v in variants}
    loaders = result["loaders"]
    device = s["device"]
    on_gpu = device.startswith("cuda")
    step = {v: _summary(runs[v], "step_s") for v in variants}
    mem = {v: median([r["peak_growth_mb"] for r in runs[v]]) for v in variants}
    lower_bound = not on_gpu and any(r.get("rss_peak_is_lower_bound") for v in variants for r in runs[v])
    lab, unl = median(loaders["labeled_s"]), median(loaders["unlabeled_s"])
    data = {v: lab if v == "supervised" else lab + unl for v in variants}
    plan = s["plan"]
    threads = f", {s['threads']} torch thread(s) per process" if s.get("threads") else ""
    lines = [f"## Training step: CPS vs nnU-Net supervised ({device})", "",
             f"Measured {machine_line(result['machine'])}. {NOISE_NOTE}", "",
             f"Plan: patch {'x'.join(map(str, plan['patch_size']))}, batch {plan['batch_size']} labeled"
             f" + {plan['unlabeled_batch_size']} unlabeled per network, {plan['n_stages']} stages, features "
             f"{plan['features_per_stage']}, {result['runs'][0]['n_params'][0] / 1e6:.2f} M parameters per network; "
             f"{s['repeats']} alternating runs per variant (fresh process each), {s['warmup']} warm-up + "
             f"{s['steps']} timed steps per run{threads}; AMP {'on' if on_gpu else 'off (CPU)'}.", ""]
    mem_name = "step's peak GPU memory above start [MB]" if on_gpu else "step's peak RSS growth [MB]"
    rows = []
    for v in variants:
        med, lo, hi = step[v]
        rows.append([LABELS[v], f"{med:.3f} ({lo:.3f}-{hi:.3f})", f"{mem[v]:.0f}", f"{data[v]:.3f}",
                     f"{med + data[v]:.3f}"])
    for v in cps_variants:
        rows.append([f"ratio {v} / supervised", f"{ratio(step[v][0], step['supervised'][0]):.2f}x",
                     f"{ratio(mem[v], mem['supervised']):.2f}x", f"{ratio(data[v], data['supervised']):.2f}x",
                     f"{ratio(step[v][0] + data[v], step['supervised'][0] + data['supervised']):.2f}x"])
    lines.append(markdown_table(["variant", "network step [s/it] median (run range)", mem_name,
                                 "data loading [s/it]", "step + data, serial [s/it]"], rows))
    if on_gpu:
        totals = {v: median([r["cuda_peak_allocated_mb"] for r in runs[v]]) for v in variants}
        lines += ["", "Peak GPU memory allocated in total (parameters, optimizer state and batch included): "
                  + ", ".join(f"{v} {totals[v]:.0f} MB" for v in variants) + "."]
    lines += ["", f"Data loading: median of {len(loaders['labeled_s'])} batches of nnU-Net's training loader "
              f"({lab:.3f} s per batch of {loaders['labeled_batch']}) and of cps3d's unlabeled loader ({unl:.3f} s per "
              f"batch of {loaders['unlabeled_batch']}), augmentation in the measuring process; nnU-Net's training "
              "overlaps it with the step in background workers.", ""]
    targets = []
    for v in cps_variants:
        t_ratio = ratio(step[v][0], step["supervised"][0])
        m_ratio = ratio(mem[v], mem["supervised"])
        targets.append([f"{v}: time of the network step", f"{t_ratio:.2f}x", f"<= {TIME_TARGET}x",
                        "yes" if t_ratio <= TIME_TARGET else "**no**"])
        targets.append([f"{v}: peak memory of the step", f"{m_ratio:.2f}x", f"<= {MEMORY_TARGET}x",
                        "yes" if m_ratio <= MEMORY_TARGET else "**no**"])
    lines.append(markdown_table(["target (CPS / supervised)", "measured", "target", "met"], targets))
    if lower_bound:
        lines += ["", "Note: in at least one run the step did not raise the process's earlier RSS peak, so that "
                  "run's growth is a lower bound."]
    breakdowns = {v: [r["breakdown_s"] for r in runs[v] if "breakdown_s" in r] for v in variants}
    if all(breakdowns.values()):
        phases = list(breakdowns[cps_variants[0]][0])
        rows = []
        for ph in phases:
            meds = {v: median([b.get(ph, math.nan) for b in breakdowns[v]]) for v in variants}
            rows.append([ph] + [fmt(meds[v], 3) for v in variants]
                        + [f"{ratio(meds[v], meds['supervised']):.2f}x" for v in cps_variants])
        lines += ["", "Where the time goes (module and optimizer hooks on extra steps; medians over runs; seconds "
                  "per iteration):", "",
                  markdown_table(["phase"] + list(variants) + [f"{v} / supervised" for v in cps_variants], rows)]
    scaling = [r["batch_scaling"] for r in runs["supervised"] if "batch_scaling" in r]
    if scaling:
        b = median([t for sc in scaling for t in sc["B"]])
        b2 = median([t for sc in scaling for t in sc["2B"]])
        lines += ["", f"Batch scaling: one network's forward + backward on 2B = {2 * plan['batch_size']} samples takes "
                  f"{ratio(b2, b):.2f}x the time on B = {plan['batch_size']} ({b2:.3f} s vs {b:.3f} s; 2.00 = "
                  "linear). CPSTrainer runs each network twice on B (the labeled, then the unlabeled batch), not "
                  "once on 2B."]
    for v in variants:
        prof = [r["profile"] for r in runs[v] if "profile" in r]
        if prof:
            lines += ["", f"torch.profiler, {v} (2 steps):", "", "```", prof[0].rstrip(), "```"]
    return "\n".join(lines)


def _settings(args: argparse.Namespace, plan: dict) -> dict:
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()
                if k not in ("json", "work_dir")}
    settings["plan"] = plan
    return settings


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) == 3 and sys.argv[1] == "--worker":
        return worker_main(sys.argv[2])
    args = parse_args(argv)
    os.environ.setdefault("nnUNet_n_proc_DA", "0")
    os.environ.setdefault("nnUNet_def_n_proc", str(args.num_processes))
    import torch

    from cps3d.planning import PlanConfig, configuration_summary

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda was asked for but torch sees no CUDA device", file=sys.stderr)
        return 2
    info = machine_info(args.device)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="cps3d_bench_train_"))
    try:
        t0 = time.perf_counter()
        plan_config = PlanConfig(configurations=(CONFIGURATION,), patch_size=tuple(args.patch),
                                 n_stages=args.n_stages, base_features=args.base_features,
                                 max_features=args.max_features, batch_size=args.batch,
                                 unlabeled_batch_size=args.unlabeled_batch)
        ds, pre, plans = prepare_phantom_dataset(work, args.phantom_size, args.labeled, args.unlabeled, 961,
                                                 f"BenchTrain{args.phantom_size.capitalize()}", plan_config,
                                                 args.num_processes)
        from cps3d.preprocessing import preprocess

        preprocess(ds, pre, plans, CONFIGURATION, num_processes=args.num_processes, progress=False)
        plan = configuration_summary(plans, CONFIGURATION)
        print(f"data ready in {time.perf_counter() - t0:.0f} s ({work}): plan {plan}", file=sys.stderr)
        if args.plan_only:
            print(plan)
            return 0
        spec = {"preprocessed_root": str(pre), "results_root": str(work / "results"), "dataset_name": ds.name,
                "device": args.device, "seed": args.seed, "warmup": args.warmup, "steps": args.steps,
                "breakdown_steps": args.breakdown_steps, "profile": args.profile,
                "loader_batches": args.loader_batches, "threads": args.threads}
        env = {"nnUNet_n_proc_DA": "0", "nnUNet_def_n_proc": "1",
               "nnUNet_compile": "true" if args.compile else "false"}
        print("timing the loaders ...", file=sys.stderr)
        loaders = run_worker(Path(__file__), {**spec, "variant": "loaders", "profile": False}, args.timeout, env)
        runs = []
        for r in range(args.repeats):
            for v in args.variants:
                t1 = time.perf_counter()
                res = run_worker(Path(__file__), {**spec, "variant": v, "profile": args.profile and r == 0},
                                 args.timeout, env)
                runs.append(res)
                if args.json:  # every finished run is kept, also if a later one fails or the caller's time runs out
                    save_json(args.json, {"benchmark": "train_step", "complete": False, "machine": info,
                                          "settings": _settings(args, plan), "loaders": loaders, "runs": runs})
                print(f"run {r + 1}/{args.repeats} {v}: median step {median(res['step_s']):.3f} s, peak growth "
                      f"{res['peak_growth_mb']:.0f} MB ({time.perf_counter() - t1:.0f} s)", file=sys.stderr)
        result = {"benchmark": "train_step", "complete": True, "machine": info, "settings": _settings(args, plan),
                  "loaders": loaders, "runs": runs}
        publish(result, report(result), args.json)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
