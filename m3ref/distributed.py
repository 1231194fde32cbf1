"""Data-parallel training across processes (paper Sec. 3.4; book ch. 09).

`setup()` is nanoGPT's DDP block: under `torchrun` (RANK / WORLD_SIZE / LOCAL_RANK set) it
joins the process group, NCCL on GPUs, gloo on CPU, with a timeout so that a rank that dies
makes the others fail instead of hang. Multi-node runs use torchrun's rendezvous.

Cross-device negatives: each rank scores its queries against the passages of *all* ranks,
so a batch of B queries per rank sees W*B*G candidates. `all_gather_with_grad` gathers the
passage embeddings; its backward sums every rank's gradient for each slice and hands each
rank the gradient of its own slice, so W ranks compute exactly the gradient of one process
holding the concatenated batch. The official code (`_dist_gather_tensor`) gathers queries
and passages without gradient, puts its own tensors back (`local_grad_only=True`) and
computes the loss of all W*B queries on every rank: after gradients are averaged over ranks
this is the exact gradient divided by W (tests/test_distributed.py checks it). In unified
fine-tuning only L_dense is computed that way, so (read from the code, not run) its gradient
weighs 1/W against the in-batch terms L_lex, L_mul, L_inter and L'.

Gradients are averaged explicitly (`average_gradients`) once per optimizer step instead of
through `DistributedDataParallel`: one M3 step calls the encoder several times (queries,
passages, sub-batches) and the dense-only stage leaves the heads without gradients, which
DDP would need `find_unused_parameters` and `no_sync` bookkeeping for. The maths is that of
DDP with `no_sync` during gradient accumulation.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional, Sequence

import torch
import torch.distributed as dist



@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: str = "cpu"

    @property
    def master(self) -> bool:  # rank 0 logs and writes checkpoints
        return self.rank == 0


def setup(timeout_s: float = 600.0, use_cuda: Optional[bool] = None) -> DistEnv:
    """Join torchrun's process group if there is one; else a single process."""
    use_cuda = torch.cuda.is_available() if use_cuda is None else use_cuda
    if int(os.environ.get("RANK", -1)) == -1:  # plain `python -m m3ref.train`
        return DistEnv(device="cuda" if use_cuda else "cpu")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    device = f"cuda:{local_rank}" if use_cuda else "cpu"
    if use_cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(seconds=timeout_s))
    return DistEnv(rank, local_rank, world_size, device)


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.world_size > 1:
        dist.barrier()


class _AllGather(torch.autograd.Function):
    """all_gather whose backward returns the sum over ranks of the gradient of own slice."""

    @staticmethod
    def forward(ctx, t):
        parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts)  # (W*N, ...)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)  # every rank's loss depends on every slice
        return grad.chunk(dist.get_world_size())[dist.get_rank()]


def all_gather_with_grad(t: torch.Tensor, local_grad_only: bool = False) -> torch.Tensor:
    """Concatenate `t` (N, ...) of all ranks in rank order -> (W*N, ...), differentiable.

    Same N on every rank. `local_grad_only=True` is the official variant: gather without
    gradient, then put the local tensor back in its slot.
    """
    if world_size() == 1:
        return t
    if not local_grad_only:
        return _AllGather.apply(t)
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.detach().contiguous())
    parts[dist.get_rank()] = t
    return torch.cat(parts)


def gather_embeddings(e, pad_id: int, local_grad_only: bool = False):
    """`model.Embeddings` of all ranks, (W*N, ...); lengths are padded to the longest rank first."""
    length = torch.tensor([e.ids.shape[1]], device=e.ids.device)
    dist.all_reduce(length, op=dist.ReduceOp.MAX)
    return e.pad(int(length), pad_id).map(lambda t: all_gather_with_grad(t, local_grad_only))


def average_gradients(params, world_size: int) -> None:
    """grad <- mean over ranks (one flat all-reduce; parameters without grad are skipped)."""
    grads = [p.grad for p in params if p.grad is not None]
    if world_size == 1 or not grads:
        return
    flat = torch._utils._flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= world_size
    for g, avg in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
        g.copy_(avg)


def mean_across_ranks(values: Sequence[float], device) -> list:
    """Average a few floats (logged losses) over ranks."""
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    if world_size() > 1:
        dist.all_reduce(t)
        t /= world_size()
    return t.tolist()


def broadcast_parameters(model, env: DistEnv) -> None:
    """Make every rank start from rank 0's weights (fresh heads are random)."""
    if env.world_size > 1:
        for t in model.state_dict().values():
            dist.broadcast(t, 0)
