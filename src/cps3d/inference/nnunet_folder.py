"""A cps3d model as a plain nnU-Net v2 model folder, for deployment with nnU-Net's own tools.

A cps3d checkpoint names its trainer ``CPSTrainer`` (or ``SupervisedTrainer``), a class nnU-Net's predictor cannot
find: it looks trainer classes up by name inside the nnunetv2 package. Both networks are built exactly as nnU-Net's
``nnUNetTrainer.build_network_architecture`` builds them from the plans, so one network's weights form a complete
nnU-Net model once the checkpoint names ``nnUNetTrainer``. :func:`export_nnunet_folder` writes

    OUT/<dataset>/nnUNetTrainer__<plans>__<configuration>/
        plans.json  dataset.json  [dataset_fingerprint.json]
        fold_N/checkpoint_final.pth   (network_weights = the chosen network; nnU-Net's inference keys)

which ``nnUNet_results=OUT nnUNetv2_predict -d <dataset> -tr nnUNetTrainer -p <plans> -c <configuration> -f N``
runs unchanged. Only inference keys are written: the optimizer state is not, so nnU-Net cannot continue training
from the export.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from cps3d.files import atomic_path, write_json
from cps3d.inference.model import DEFAULT_CHECKPOINT, load_model

log = logging.getLogger(__name__)

__all__ = ["NNUNET_TRAINER", "EXPORT_BRANCHES", "export_nnunet_folder"]

NNUNET_TRAINER = "nnUNetTrainer"
EXPORT_BRANCHES = ("1", "2")  # one network per exported model: nnU-Net averages folds, not our two branches


def export_nnunet_folder(model_dir: str | os.PathLike, out_root: str | os.PathLike, branch: str = "1",
                         folds: Sequence[int | str] | None = None, checkpoint: str = DEFAULT_CHECKPOINT,
                         overwrite: bool = False) -> Path:
    """Write network ``branch`` (``"1"`` or ``"2"``) of the cps3d model in ``model_dir`` as an nnU-Net v2 model
    folder under the results root ``out_root`` (module docstring); returns the folder written.

    ``folds``: those to export (None: every ``fold_N`` holding ``checkpoint``, as for ``cps3d predict``); each is
    written as ``fold_N/checkpoint_final.pth``. Raises FileNotFoundError / ValueError as :func:`load_model` does,
    ValueError for another branch, and FileExistsError when the target folder exists and ``overwrite`` is False.
    """
    import torch

    branch = str(branch)
    if branch not in EXPORT_BRANCHES:
        raise ValueError(f"branch {branch!r}: an nnU-Net model folder holds one network per fold; choose 1 or 2")
    model = load_model(model_dir, folds, checkpoint, branch)
    network = model.build_network()  # nnU-Net's own network of these plans; the first fold's weights fit it
    for name, weights in zip(model.parameter_names[1:], model.parameters[1:]):
        try:
            network.load_state_dict(weights)
        except RuntimeError as e:
            raise ValueError(f"{model.model_dir}: the weights of {name} do not fit the network of plans.json "
                             f"({str(e).splitlines()[0]})") from e
    plans_name = model.plans.get("plans_name")
    if not isinstance(plans_name, str) or not plans_name:
        raise ValueError(f"{model.model_dir / 'plans.json'}: no 'plans_name', which names the nnU-Net folder")
    dataset = model.model_dir.parent.name
    target = Path(out_root).expanduser() / dataset / f"{NNUNET_TRAINER}__{plans_name}__{model.configuration}"
    if target.resolve() == model.model_dir.resolve():
        raise ValueError(f"{target}: the export would overwrite the model it is made from; choose another -o")
    if target.exists():
        if not overwrite:
            raise FileExistsError(f"{target}: already exists (pass --overwrite to replace it)")
        shutil.rmtree(target)
    target.mkdir(parents=True)
    write_json(target / "plans.json", model.plans)
    write_json(target / "dataset.json", model.dataset_json)
    fingerprint = model.model_dir / "dataset_fingerprint.json"
    if fingerprint.is_file():
        with atomic_path(target / fingerprint.name) as tmp:
            shutil.copyfile(fingerprint, tmp)
    for fold, weights in zip(model.folds, model.parameters):
        # nnUNetTrainer.__init__'s arguments, as nnU-Net stores them
        init_args = {"plans": model.plans, "configuration": model.configuration, "fold": fold,
                     "dataset_json": model.dataset_json, "device": torch.device("cpu")}
        ckpt = {"network_weights": weights, "init_args": init_args, "trainer_name": NNUNET_TRAINER,
                "inference_allowed_mirroring_axes": model.mirror_axes,
                "cps3d_export": {"model_dir": str(model.model_dir), "branch": branch, "mode": model.mode,
                                 "trainer": model.trainer_name, "checkpoint": checkpoint}}
        with atomic_path(target / f"fold_{fold}" / "checkpoint_final.pth") as tmp:
            torch.save(ckpt, tmp)
    log.info("exported network %s of %s (%s) to %s", branch, model.model_dir, ", ".join(model.parameter_names),
             target)
    return target
