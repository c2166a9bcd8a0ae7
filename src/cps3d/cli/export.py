"""cps3d export: a trained cps3d model as a plain nnU-Net v2 model folder (one network), for nnU-Net's own tools."""

from __future__ import annotations

import argparse

COMMAND = "export"


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        COMMAND,
        help="write one network of a model as a plain nnU-Net v2 model folder (for nnUNetv2_predict)",
        description="Write network 1 (or 2) of a trained cps3d model folder as a plain nnU-Net v2 model folder "
        "OUT/<dataset>/nnUNetTrainer__<plans>__<configuration> (plans.json, dataset.json, fold_N/"
        "checkpoint_final.pth naming nnUNetTrainer), which nnU-Net's own tools run unchanged: "
        "nnUNet_results=OUT nnUNetv2_predict -d <dataset> -tr nnUNetTrainer -p <plans> -c <configuration> -f N "
        "-i IN -o PRED. Only inference keys are written (no optimizer state).",
    )
    p.add_argument("-m", "--model", required=True, metavar="MODEL_DIR",
                   help="trained model folder <results>/<dataset>/<Trainer>__<plans>__<configuration>")
    p.add_argument("-o", "--output", required=True, metavar="OUT_RESULTS_ROOT",
                   help="results root to write into (use it as nnUNet_results)")
    p.add_argument("--branch", choices=("1", "2"), default="1", help="network to export (CPS models; default 1)")
    p.add_argument("-f", "--folds", nargs="+", metavar="FOLD",
                   help="folds to export (numbers or 'all'; default: every fold_N holding the checkpoint)")
    p.add_argument("--checkpoint", default="checkpoint_final.pth", metavar="NAME",
                   help="checkpoint file in each fold folder (default: checkpoint_final.pth); written as "
                   "checkpoint_final.pth")
    p.add_argument("--overwrite", action="store_true", help="replace an existing exported folder")
    return p


def run(args: argparse.Namespace) -> int:
    from cps3d.files import check_output_folder
    from cps3d.inference.nnunet_folder import export_nnunet_folder

    check_output_folder(args.output, "output folder (-o)")
    target = export_nnunet_folder(args.model, args.output, args.branch, args.folds, args.checkpoint, args.overwrite)
    print(f"wrote {target}")
    return 0
