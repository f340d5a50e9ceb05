"""Data-parallel training over views (``torchrun --nproc_per_node=K train.py --stage rgb|instance``).

Every rank holds the whole model. A step renders ``batch_views`` cameras, drawn by the same seeded
generator on every rank; rank r renders the r-th contiguous share of them, each view's loss divided by
``batch_views``, and the gradients are summed over ranks (one all-reduce of a flat buffer). So K ranks
compute what one process computes when it renders the same cameras in the same step, up to the order
of float additions. Densification needs each view's pixel-space gradients and radii: they are gathered
in camera order, so every rank feeds ``DefaultStrategy`` the same statistics and takes the same
decisions (its random split offsets come from the global RNG, seeded alike on every rank).

``gloo`` on CPU, ``nccl`` on CUDA (one GPU per rank: ``cuda:LOCAL_RANK``). Without torchrun's
environment (``WORLD_SIZE`` unset or 1) everything here is a no-op: world size 1, rank 0.
docs/scale_out.md has the how and when.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from types import SimpleNamespace

import torch

from .errors import StageError


@dataclass
class Ranks:
    world: int = 1
    rank: int = 0
    local_rank: int = 0
    device: torch.device | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def from_env() -> tuple[int, int, int]:
    """(world size, rank, local rank) from torchrun's environment; (1, 0, 0) without it."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise StageError("WORLD_SIZE / RANK / LOCAL_RANK must be integers (set by torchrun)") from None
    return world, rank, local


def init(device: torch.device, timeout_min: float = 60.0) -> Ranks:
    """Join the process group torchrun set up (a no-op for one process). On CUDA each rank takes
    ``cuda:LOCAL_RANK`` and the ``nccl`` backend; on CPU ``gloo``."""
    world, rank, local = from_env()
    if world <= 1:
        return Ranks(device=device)
    import torch.distributed as dist

    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise StageError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA devices: "
                             f"use at most that many --nproc_per_node")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_min))
    return Ranks(world, rank, local, device)


def shutdown(ranks: Ranks) -> None:
    if ranks.active:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def views_per_step(batch_views: int, ranks: Ranks, section: str) -> int:
    """``<section>.batch_views`` (0 = one view per rank); it must split evenly over the ranks."""
    b = batch_views or ranks.world
    if b % ranks.world:
        raise StageError(f"{section}.batch_views={b} does not split over {ranks.world} ranks: use a multiple of "
                         f"--nproc_per_node (or 0 = one view per rank)")
    return b


def my_share(items: list, ranks: Ranks) -> list:
    """Rank r's contiguous share of the step's cameras (so gathering in rank order is camera order)."""
    k = len(items) // ranks.world
    return items[ranks.rank * k:(ranks.rank + 1) * k]


def broadcast(obj, ranks: Ranks):
    """Rank 0's ``obj`` on every rank."""
    if not ranks.active:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ranks: Ranks) -> None:
    if ranks.active:
        import torch.distributed as dist

        dist.barrier()


def sum_gradients(tensors: list[torch.Tensor], ranks: Ranks, loss: float) -> float:
    """Sum the gradients of ``tensors`` (and the step's ``loss``) over the ranks, in place; returns the
    summed loss. Tensors without a gradient have none on every rank (same step, same graph)."""
    if not ranks.active:
        return loss
    import torch.distributed as dist

    grads = [t.grad for t in tensors if t.grad is not None]
    dev = grads[0].device if grads else ranks.device
    flat = torch.cat([g.reshape(-1) for g in grads] + [torch.tensor([loss], dtype=torch.float32, device=dev)])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    i = 0
    for g in grads:
        g.copy_(flat[i:i + g.numel()].view_as(g))
        i += g.numel()
    return float(flat[-1])


def merged_info(infos: list[dict], ref_width: int, ref_height: int, n_views: int, ranks: Ranks) -> dict:
    """The ``info`` gsplat's ``DefaultStrategy`` would get from rendering every view of the step in one
    call: pixel-mean gradients [C,N,2] and radii [C,N,2] in camera order over all ranks, C = ``n_views``.
    Each view's gradient is rescaled so that the strategy's single ``width / 2 * n_cameras`` factor
    (with the step's first camera's size) gives that view its own ``w_i / 2``."""
    rows = []
    for info in infos:
        m = info["means2d"]
        g = m.grad if m.grad is not None else torch.zeros_like(m)
        g = g.detach().clone()
        g[..., 0] *= info["width"] / ref_width
        g[..., 1] *= info["height"] / ref_height
        rows.append(torch.cat([g, info["radii"].to(g.dtype)], dim=-1))  # [1, N, 4]
    local = torch.cat(rows, dim=0)
    if ranks.active:
        import torch.distributed as dist

        parts = [torch.empty_like(local) for _ in range(ranks.world)]
        dist.all_gather(parts, local)
        local = torch.cat(parts, dim=0)
    return {"means2d": SimpleNamespace(grad=local[..., :2], absgrad=None), "radii": local[..., 2:],
            "width": ref_width, "height": ref_height, "n_cameras": n_views, "gaussian_ids": None}
