"""Training run used by the tests from a separate process: multi-process (torchrun) and kill/resume.

Run: ``python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_worker.py --out DIR``
or plainly ``python tests/ddp_worker.py --out DIR``. Each rank writes ``DIR/<kind>/rank<r>.json`` with
its final weights, the dataset indices it saw and the mse before/after training.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from dfm.training import TrainConfig, Trainer


class Regression(nn.Module):
    """``sigterm_at``: send SIGTERM to this process during that forward call (1-based)."""

    def __init__(self, sigterm_at: int | None = None) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 1)
        self.sigterm_at, self.calls = sigterm_at, 0

    def forward(self, batch, generator=None):
        self.calls += 1
        if self.calls == self.sigterm_at:
            os.kill(os.getpid(), signal.SIGTERM)
        x = batch["x"] + 0.01 * torch.randn(batch["x"].shape, generator=generator, device=batch["x"].device)
        mse = (self.lin(x) - batch["y"]).pow(2).mean()
        return {"loss": mse, "mse": mse}


class Items(Dataset):
    def __init__(self, n: int = 256) -> None:
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.3
        self.seen: list[int] = []

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        self.seen.append(int(i))
        return {"x": self.x[i], "y": self.y[i]}


class Batches(Items):
    """Fetches whole batches itself (torch's ``__getitems__``), with an identity collate_fn."""

    def __getitems__(self, indices):
        self.seen.extend(int(i) for i in indices)
        return {"x": self.x[indices], "y": self.y[indices]}

    @staticmethod
    def collate_fn(batch):
        return batch


def full_mse(model: nn.Module, data: Items) -> float:
    with torch.no_grad():
        return (model.lin(data.x) - data.y).pow(2).mean().item()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--kinds", default="item,batch")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--checkpoint-every", type=int, default=10)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--sigterm", type=int, nargs=2, metavar=("RANK", "CALL"), help="SIGTERM one rank at a forward call")
    args = p.parse_args()

    for kind in args.kinds.split(","):
        torch.manual_seed(0)  # same init in every process (DDP broadcasts rank 0's anyway)
        term_rank, term_call = args.sigterm or (None, None)
        model = Regression(sigterm_at=term_call if term_rank == int(os.environ.get("RANK", 0)) else None)
        data = (Items if kind == "item" else Batches)()
        config = TrainConfig(
            steps=args.steps, batch_size=16, lr=0.1, warmup_steps=2, checkpoint_every=args.checkpoint_every,
            log_every=5, ema_decay=0.9, device="cpu", progress=False,
        )
        trainer = Trainer(model, data, config, args.out / kind, run_config={"kind": kind})
        before = full_mse(model, data)
        stats = trainer.fit(resume=args.resume)
        rank = trainer.accelerator.process_index
        result = {
            "rank": rank,
            "world": trainer.accelerator.num_processes,
            "distributed": str(trainer.accelerator.distributed_type),
            "weights": {k: t.tolist() for k, t in model.state_dict().items()},
            "seen": data.seen,
            "mse_before": before,
            "mse_after": full_mse(model, data),
            "stats": stats,
        }
        (args.out / kind / f"rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
