"""Worker for tests/test_ddp.py, started by torchrun (two gloo processes) or plainly (one process).

    ddp_worker.py grad PREPROCESSED RESULTS OUT   the trainer's forward_backward on a fixed global batch; dump gradients
    ddp_worker.py train PREPROCESSED RESULTS OUT  one short CPS epoch via cps3d.training.run.train; dump parameters
"""

import os
import sys

os.environ.setdefault("nnUNet_n_proc_DA", "0")
os.environ.setdefault("nnUNet_def_n_proc", "1")

import torch  # noqa: E402

from cps3d.training.base import unwrap  # noqa: E402
from cps3d.training.config import TrainConfig  # noqa: E402
from cps3d.training.run import build_trainer, maybe_init_distributed, train  # noqa: E402

DATASET = "Dataset901_Toy"
GLOBAL_BATCH = 4


def fixed_batch(trainer):
    g = torch.Generator().manual_seed(0)
    labeled = trainer.random_batch(GLOBAL_BATCH, generator=g)
    x_u = trainer.random_batch(GLOBAL_BATCH, generator=g)["data"]
    return labeled["data"], labeled["target"], x_u


def grad(pre, res, out):
    distributed = maybe_init_distributed(torch.device("cpu"))
    rank = torch.distributed.get_rank() if distributed else 0
    world = torch.distributed.get_world_size() if distributed else 1
    trainer = build_trainer(DATASET, pre, res, "3d_fullres", 0,
                            TrainConfig(epochs=1, iters_per_epoch=1, val_iters=0, final_validation=False),
                            device="cpu", show_progress=False)
    trainer.current_lambda = 0.5
    x_l, target, x_u = fixed_batch(trainer)
    share = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
    trainer.forward_backward(x_l[share], [t[share] for t in target], x_u[share])  # the trainer's own two passes
    # the lowest deep-supervision head gets no gradient at all when its loss weight is exactly 0 (one process)
    grads = [{n: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for n, p in unwrap(net).named_parameters()}
             for net in trainer.networks]
    torch.save({"grads": grads, "world": world}, os.path.join(out, f"grad_world{world}_rank{rank}.pt"))
    if distributed:
        torch.distributed.destroy_process_group()


def train_epoch(pre, res, out):
    trainer = train(DATASET, pre, res, "3d_fullres", 0,
                    TrainConfig(epochs=1, iters_per_epoch=3, val_iters=1, final_validation=False),
                    device="cpu", show_progress=False)
    rank = int(os.environ.get("RANK", "0"))
    torch.save({"params": [unwrap(n).state_dict() for n in trainer.networks],
                "batch_size": trainer.batch_size, "unlabeled_batch_size": trainer.unlabeled_batch_size,
                "output_folder": trainer.output_folder},
               os.path.join(out, f"train_rank{rank}.pt"))


if __name__ == "__main__":
    torch.set_num_threads(1)
    mode, pre, res, out = sys.argv[1:5]
    {"grad": grad, "train": train_epoch}[mode](pre, res, out)
