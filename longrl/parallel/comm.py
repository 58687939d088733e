"""Small collectives for sequence-parallel attention: a ring shift (P2P) and autograd-aware all-to-alls.

All of them take a process group (the sp group) and address peers by their rank *within* the group; global
ranks for the P2P calls come from `dist.get_global_rank`. They work with gloo (CPU) and NCCL (GPU): gloo
implements `all_to_all_single` and `batch_isend_irecv` (checked with torch 2.13).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


def group_size(group: dist.ProcessGroup | None) -> int:
    """Ranks in `group`; 1 for None (no sequence parallelism) or when torch.distributed is not running."""
    if group is None or not dist.is_initialized():
        return 1
    return dist.get_world_size(group)


# ----------------------------------------------------------------------------------------------------------
# ring shift: send a tensor to the next rank of the group and receive the previous rank's, asynchronously
# ----------------------------------------------------------------------------------------------------------


@dataclass
class PendingShift:
    """A posted ring transfer. `wait()` blocks until it is done and returns the received tensor.

    The send buffer is held here so it stays alive (and must stay unmodified) until the transfer completes.
    """

    received: torch.Tensor
    sent: torch.Tensor
    works: list

    def wait(self) -> torch.Tensor:
        for work in self.works:
            work.wait()
        self.works = []
        return self.received


class Ring:
    """The ring of a process group: rank i sends to i+1 and receives from i-1 (mod size)."""

    def __init__(self, group: dist.ProcessGroup) -> None:
        self.group = group
        self.size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.next_peer = dist.get_global_rank(group, (self.rank + 1) % self.size)
        self.prev_peer = dist.get_global_rank(group, (self.rank - 1) % self.size)

    def shift(self, tensor: torch.Tensor, tag: int) -> PendingShift:
        """Post: send `tensor` (contiguous) to the next rank, receive a like-shaped tensor from the previous one.

        Returns at once; the transfer runs in the background (gloo threads / the NCCL stream). Every rank of
        the group must post the same sequence of shifts. `tag` separates independent streams of shifts
        (gloo matches by tag; NCCL ignores tags and matches by posting order, which is the same on all ranks).
        """
        received = torch.empty_like(tensor, memory_format=torch.contiguous_format)
        ops = [
            dist.P2POp(dist.isend, tensor, self.next_peer, group=self.group, tag=tag),
            dist.P2POp(dist.irecv, received, self.prev_peer, group=self.group, tag=tag),
        ]
        return PendingShift(received=received, sent=tensor, works=dist.batch_isend_irecv(ops))


# ----------------------------------------------------------------------------------------------------------
# all-to-all between sequence sharding and head sharding (Ulysses)
# ----------------------------------------------------------------------------------------------------------


def _seq_to_heads(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    sp = dist.get_world_size(group)
    b, h, ls, d = x.shape
    # send[j] = the heads rank j will own, for this rank's slice of the sequence.
    send = x.reshape(b, sp, h // sp, ls, d).transpose(0, 1).contiguous()
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    # recv[j] = this rank's heads for rank j's slice: concatenate the slices in rank order.
    return recv.permute(1, 2, 0, 3, 4).reshape(b, h // sp, sp * ls, d)


def _heads_to_seq(y: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    sp = dist.get_world_size(group)
    b, hs, length, d = y.shape
    # send[j] = this rank's heads for rank j's slice of the sequence.
    send = y.reshape(b, hs, sp, length // sp, d).permute(2, 0, 1, 3, 4).contiguous()
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    # recv[j] = rank j's heads for this rank's slice: heads in rank order.
    return recv.transpose(0, 1).reshape(b, sp * hs, length // sp, d)


class _SeqToHeads(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:  # type: ignore[override]
        ctx.group = group
        return _seq_to_heads(x, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        # The all-to-all only moves elements: its adjoint is the inverse all-to-all.
        return _heads_to_seq(grad, ctx.group), None


class _HeadsToSeq(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:  # type: ignore[override]
        ctx.group = group
        return _heads_to_seq(y, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return _seq_to_heads(grad, ctx.group), None


def seq_to_heads(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """All-to-all from sequence-sharded to head-sharded, differentiable.

    x [B, H, Ls, D]: this rank's slice of the sequence, all H heads (H divisible by the group size sp).
    Returns [B, H / sp, sp * Ls, D]: heads [r*H/sp, (r+1)*H/sp) of the whole sequence for group rank r, the
    ranks' slices concatenated in rank order (for a zigzag shard that is not the natural order).
    """
    sp = dist.get_world_size(group)
    if x.dim() != 4 or x.shape[1] % sp:
        raise ValueError(f"seq_to_heads: need x [B, H, Ls, D] with H divisible by {sp}, got {tuple(x.shape)}")
    return _SeqToHeads.apply(x, group)


def heads_to_seq(y: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """Inverse of `seq_to_heads`, differentiable: y [B, H / sp, sp * Ls, D] -> [B, H, Ls, D]."""
    sp = dist.get_world_size(group)
    if y.dim() != 4 or y.shape[2] % sp:
        raise ValueError(f"heads_to_seq: need y [B, Hs, L, D] with L divisible by {sp}, got {tuple(y.shape)}")
    return _HeadsToSeq.apply(y, group)
