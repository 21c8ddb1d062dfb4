"""Gradient Surgery on an FSDP2-sharded transformer: every rank holds a shard of each gradient, and
the projection needs one all-reduce of a 2 x 2 Gram matrix per step -- no gradient is gathered.

    torchrun --nproc-per-node 2 examples/fsdp2_surgery.py            # CPU, gloo
    torchrun --nproc-per-node 8 examples/fsdp2_surgery.py --steps 50 # GPUs, nccl

Each rank draws the same forget and retain token batches here; in a real run each rank reads its
own slice of the data, as in any FSDP training loop.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

import fastunlearn as fu
from fastunlearn.profile import transformer_target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny", help="built-in transformer size (tiny, 10m, 100m, ...)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device("cuda" if cuda else "cpu")
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))

    torch.manual_seed(0)
    target = transformer_target(args.size, device=device)
    for block in target.model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(target.model, mesh=mesh)

    surgery = fu.methods.GradientSurgery(
        target.model,
        optimizer=fu.optim.SGD(target.model.parameters(), lr=args.lr, momentum=0.9),
        loss_fn=target.loss_fn,
    )
    generator = torch.Generator().manual_seed(1)
    forget = target.make_batch(generator)
    history = []
    for _ in range(args.steps):
        history.append(surgery.step(forget, target.make_batch(generator)))
    if dist.get_rank() == 0:
        first, last = history[0], history[-1]
        print(f"{dist.get_world_size()} ranks, {args.steps} steps of Gradient Surgery on FSDP2 shards")
        print(f"forget loss {float(first['forget_loss']):.4f} -> {float(last['forget_loss']):.4f}")
        print(f"retain loss {float(first['retain_loss']):.4f} -> {float(last['retain_loss']):.4f}")
        cosine, orthogonality = float(last["cosine"]), float(last["retain_dot_update"])
        print(f"cosine(g_f, g_r) at the last step {cosine:+.4f}; g_r . update = {orthogonality:.2e}")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
