"""cps3d profile: FLARE 2022's efficiency measures (time, CPU and GPU-memory areas) of any command."""

from __future__ import annotations

import argparse
import os
import sys

from cps3d.cli import common

COMMAND = "profile"


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        COMMAND,
        help="run a command and measure its running time, CPU and GPU memory (FLARE 2022 measures)",
        description="Run COMMAND, sampling every --interval seconds the machine's CPU utilisation, RAM, the "
        "command's process tree (CPU, RSS) and GPU memory in use. Writes profile.json, samples.csv and "
        "profile.png to OUT_DIR and prints running time, peak GPU memory, the area under the GPU memory curve "
        "(MB*s, above --gpu-allowance-mb) and under the CPU utilisation curve (%*s). Exits with the command's "
        "exit code. Example: cps3d profile -o prof -- cps3d predict ...",
    )
    p.add_argument("-o", "--output", metavar="OUT_DIR", default="profile",
                   help="folder for profile.json, samples.csv and profile.png (default: ./profile)")
    p.add_argument("--interval", type=float, default=0.1, metavar="S", help="seconds between samples (default 0.1)")
    p.add_argument("--gpu-allowance-mb", type=float, metavar="MB",
                   help="GPU memory not counted in the area (default: FLARE 2022's 2048, as in 'cps3d predict "
                   "--profile' and the demo; 0 counts all of it)")
    p.add_argument("--no-plot", action="store_true", help="do not draw profile.png")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARGS...]",
                   help="the command to run, after '--'")
    return p


def run(args: argparse.Namespace) -> int:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise common.CLIError("no command given: cps3d profile [-o OUT_DIR] -- COMMAND [ARGS...]")
    if not args.interval > 0:
        raise common.CLIError(f"--interval must be positive, got {args.interval}")
    if args.gpu_allowance_mb is not None and not args.gpu_allowance_mb >= 0:
        raise common.CLIError(f"--gpu-allowance-mb must be >= 0, got {args.gpu_allowance_mb}")

    from cps3d.evaluation.profiler import FLARE_GPU_ALLOWANCE_MB, ProfileReport, profile_command
    from cps3d.files import check_output_folder, read_json

    check_output_folder(args.output, "output folder (-o)")  # before the command runs, not after
    try:
        allowance = FLARE_GPU_ALLOWANCE_MB if args.gpu_allowance_mb is None else args.gpu_allowance_mb
        code = profile_command(cmd, args.output, interval=args.interval, gpu_allowance_mb=allowance,
                               plot=not args.no_plot)
    except FileNotFoundError as e:
        print(f"cps3d profile: {e}", file=sys.stderr)
        return 127  # as a shell reports a command it cannot run
    report = ProfileReport.from_dict(read_json(os.path.join(args.output, "profile.json")))
    print(report.format(), file=sys.stderr)
    print(f"exit code {code}; profile written to {args.output}", file=sys.stderr)
    return code
