"""Data-parallel training with TrustRegionOptimizer: each rank evaluates its shard, all ranks take the same step.

An MLP 64-128-10 classifies scikit-learn's digits with cross-entropy (the
generalized Gauss-Newton model, ``GaussNewtonModel(loss="cross_entropy")``).
Every step takes a global batch, split over the ranks by a
``DistributedSampler``; the optimizer sums the cost, the gradient and every
curvature product over the ranks (``data_parallel=True``), so the cost is the
mean over the global batch and all ranks take the same step with the same
radius. The script checks at the end that the parameters are the same on
every rank.

Run (CPU, gloo; on GPUs the backend is NCCL and each rank takes its GPU):

    torchrun --nproc-per-node 2 examples/distributed_train.py [--epochs 5] [--batch 256]

Many machines: the same script under ``torchrun --nnodes N --nproc-per-node G
--rdzv-backend c10d --rdzv-endpoint HOST:PORT`` (see docs/training.md).
"""

from __future__ import annotations

import argparse
import datetime
import os

import torch
import torch.distributed as dist
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from trustls import GaussNewtonModel, SteihaugCG, TrustRegion, TrustRegionOptimizer
from trustls.distributed import DataParallel, fingerprint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=256, help="global batch, split over the ranks")
    parser.add_argument("--cg-iter", type=int, default=10)
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=5))
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', 0)}") if cuda else torch.device("cpu")
    torch.set_num_threads(1)

    digits = load_digits()
    X = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    order = torch.randperm(len(X), generator=torch.Generator().manual_seed(0))
    train, test = TensorDataset(X[order[:1437]], y[order[:1437]]), (X[order[1437:]], y[order[1437:]])
    sampler = DistributedSampler(train, num_replicas=world, rank=rank, shuffle=True, seed=0, drop_last=True)
    loader = DataLoader(train, batch_size=args.batch // world, sampler=sampler, drop_last=True)

    torch.manual_seed(rank)  # deliberately different: the broadcast below makes them equal
    net = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.Tanh(), torch.nn.Linear(128, 10)).to(device)
    for p in net.parameters():
        dist.broadcast(p.data, src=0)  # or wrap the module in DistributedDataParallel, which does the same

    method = TrustRegion(GaussNewtonModel(loss="cross_entropy"), solver=SteihaugCG(max_iter=args.cg_iter))
    opt = TrustRegionOptimizer(net.parameters(), method, data_parallel=DataParallel())

    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        costs = []
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            costs.append(opt.step(lambda: (net(xb), yb)))  # the global batch's mean cross-entropy
        with torch.no_grad():
            accuracy = float((net(test[0].to(device)).argmax(1).cpu() == test[1]).float().mean())
        if rank == 0:
            print(f"epoch {epoch + 1}: mean batch cost {sum(costs) / len(costs):.4f}, last radius "
                  f"{opt.last.radius:.3g}, test accuracy {accuracy:.3f}", flush=True)

    x = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    mine = fingerprint(x)
    table = torch.zeros(world, 2, dtype=torch.int64, device=device)
    table[rank] = mine
    dist.all_reduce(table)
    if rank == 0:
        same = bool((table == table[0]).all())
        print(f"{world} ranks, parameters identical on every rank: {same}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
