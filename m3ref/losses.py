"""The training objective of M3 (paper Sec. 3.3): InfoNCE per mode, self-knowledge distillation.

Group layout (ch. 05): B queries, each with G passages, positive first, flattened to B*G
rows. Query i's positive is column i*G; every other passage in the batch is a negative.
The loss terms take scores already divided by the temperature tau.

`m3_objective` is the one driver of the whole objective: from the embeddings of a batch
(`model.Embeddings`) it computes the tau-scaled scores (`m3_scores`), gathers the passages of
every rank when negatives cross devices, and returns every loss term (`m3_loss`).
`M3Model.training_loss`, which the trainer calls, ends in it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

import torch
import torch.nn.functional as F

from . import distributed
from .config import M3Config
from .scores import s_dense, s_inter, s_lex, s_mul

if TYPE_CHECKING:
    from .model import Embeddings


def group_targets(batch_size: int, group_size: int, offset: int = 0, device=None) -> torch.Tensor:
    """Column of each query's positive in the (B, B*G) score matrix: i*G + offset (ch. 05)."""
    return torch.arange(batch_size, device=device) * group_size + offset


def info_nce(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """InfoNCE L_s = -log( exp(s(q,p*)/tau) / sum_p exp(s(q,p)/tau) ), mean over queries (paper Sec. 3.3; ch. 05).

    scores (B, N) are tau-scaled logits; targets (B,) the positive's column.
    """
    return F.cross_entropy(scores, targets)


def self_distill_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """L'_* = -mean_q sum_p softmax(s_inter)_p * log softmax(s_*)_p (paper Sec. 3.3; ch. 06).

    The teacher s_inter is detached: it only sets soft targets. This is a cross-entropy
    with soft targets (no entropy term), as in FlagEmbedding's `distill_loss("kl_div")`.
    """
    targets = torch.softmax(teacher.detach(), dim=-1)
    return -(targets * torch.log_softmax(student, dim=-1)).sum(-1).mean()


def loss_L(L_dense, L_lex, L_mul, L_inter, config: M3Config):
    """L = (l1*L_dense + l2*L_lex + l3*L_mul + L_inter) / 4 (paper Sec. 3.3; ch. 05)."""
    l1, l2, l3 = config.loss_weights
    return (l1 * L_dense + l2 * L_lex + l3 * L_mul + L_inter) / config.l_divisor


def loss_L_prime(L_prime_dense, L_prime_lex, L_prime_mul, config: M3Config):
    """L' = (l1*L'_dense + l2*L'_lex + l3*L'_mul) / c, c = 3 (official) or 1 (paper Sec. 3.3; ch. 06)."""
    l1, l2, l3 = config.loss_weights
    return (l1 * L_prime_dense + l2 * L_prime_lex + l3 * L_prime_mul) / config.l_prime_divisor


def loss_final(L, L_prime, config: M3Config):
    """L_final = (L + L') / 2 (paper Sec. 3.3; ch. 06)."""
    return (L + L_prime) / config.l_final_divisor


def local_group_scores(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """The (B, G) block of each query's own passages from (B, B*G) scores (for teacher KD)."""
    cols = group_targets(scores.shape[0], group_size, device=scores.device)[:, None] + torch.arange(
        group_size, device=scores.device)  # (B, G)
    return scores.gather(1, cols)


def teacher_kd_loss(scores: torch.Tensor, teacher_targets: torch.Tensor, group_size: int,
                    kind: str = "m3_kd_loss") -> torch.Tensor:
    """Distillation from teacher scores (official `kd_loss_type`; ch. 05).

    teacher_targets (B, G) = softmax of the teacher's scores over each group.
    * `kl_div`: -mean sum t*log_softmax(local (B, G) scores), plus the ordinary InfoNCE.
    * `m3_kd_loss`: for k = 0..G-1, mean_b t[b,k] * CE(scores, target b*G+k), where the
      group's earlier passages b*G .. b*G+k-1 are masked out of the softmax.
    """
    targets = group_targets(scores.shape[0], group_size, device=scores.device)
    if kind == "kl_div":
        local = local_group_scores(scores, group_size)
        kd = -(teacher_targets * torch.log_softmax(local, dim=-1)).sum(-1).mean()
        return kd + info_nce(scores, targets)
    if kind != "m3_kd_loss":
        raise ValueError(f"unknown kd loss {kind!r}")
    loss, mask = 0.0, torch.zeros_like(scores)
    for k in range(group_size):
        per_query = F.cross_entropy(scores + mask, targets + k, reduction="none")  # (B,)
        loss = loss + (teacher_targets[:, k] * per_query).mean()
        mask = mask.scatter(1, (targets + k)[:, None], torch.finfo(scores.dtype).min)
    return loss


def m3_loss(s_dense: torch.Tensor, s_lex: Optional[torch.Tensor], s_mul: Optional[torch.Tensor],
            targets: torch.Tensor, config: M3Config, step: int = 0,
            teacher_targets: Optional[torch.Tensor] = None,
            dense_loss: Optional[torch.Tensor] = None, group_size: Optional[int] = None) -> dict:
    """Every term of M3's objective from tau-scaled (B, N) scores (paper Sec. 3.3).

    Returns s_inter, L_dense, L_lex, L_mul, L_inter, L, L_prime (+ its parts) and L_final.
    `dense_loss` replaces L_dense when it was computed over cross-device negatives
    (the official code does this for dense only). `teacher_targets` (B, G) switch each
    mode's InfoNCE to the teacher-distillation loss `config.kd_loss_type`; `group_size`
    defaults to N // B (in-batch negatives).
    """
    group_size = group_size or s_dense.shape[1] // s_dense.shape[0]

    def contrastive(scores):
        if teacher_targets is not None:
            return teacher_kd_loss(scores, teacher_targets, group_size, config.kd_loss_type)
        return info_nce(scores, targets)

    out = {"s_dense": s_dense, "L_dense": contrastive(s_dense) if dense_loss is None else dense_loss}
    if not config.unified:
        out["L"] = out["L_final"] = out["L_dense"]
        return out
    inter = s_inter(s_dense, s_lex, s_mul, config.ensemble_weights)
    out.update(s_lex=s_lex, s_mul=s_mul, s_inter=inter, L_lex=contrastive(s_lex),
               L_mul=contrastive(s_mul), L_inter=contrastive(inter))
    out["L"] = loss_L(out["L_dense"], out["L_lex"], out["L_mul"], out["L_inter"], config)
    out["L_prime_dense"] = self_distill_loss(s_dense, inter)
    out["L_prime_lex"] = self_distill_loss(s_lex, inter)
    out["L_prime_mul"] = self_distill_loss(s_mul, inter)
    out["L_prime"] = loss_L_prime(out["L_prime_dense"], out["L_prime_lex"], out["L_prime_mul"], config)
    if config.self_distill and step > config.self_distill_start_step:
        out["L_final"] = loss_final(out["L"], out["L_prime"], config)
    else:  # before self-distillation starts the official code optimises L alone
        out["L_final"] = out["L"]
    return out


def m3_scores(q: "Embeddings", p: "Embeddings", config: M3Config, ignore_ids: Sequence[int]) -> dict:
    """tau-scaled s_dense, s_lex, s_mul of every query against every passage, each (B, N)
    (paper Sec. 3.2-3.3; s_lex and s_mul only in unified fine-tuning)."""
    tau = config.temperature
    out = {"s_dense": s_dense(q.dense, p.dense) / tau, "s_lex": None, "s_mul": None}
    if config.unified:
        out["s_lex"] = s_lex(q.ids, q.weights, p.ids, p.weights, ignore_ids) / tau
        out["s_mul"] = s_mul(q.colbert, p.colbert, q.colbert_mask, p.colbert_mask,
                             config.colbert_max_over_padding) / tau
    return out


def m3_objective(q: "Embeddings", p: "Embeddings", config: M3Config, ignore_ids: Sequence[int], pad_id: int,
                 group_size: int, step: int = 0, teacher_scores=None, in_batch_negatives: bool = True) -> dict:
    """Every score and loss of one batch: B queries, each with G passages, positive first (ch. 05-09).

    q: (B, ...) queries, p: (B*G, ...) their groups. `teacher_scores` (B, G), raw teacher
    scores, become soft targets softmax(teacher) per group. Under torchrun, `config.cross_device`
    says which scores see the passages of all W ranks (B*G -> W*B*G candidates): "none";
    "dense", the official choice: L_dense over every rank's passages, lexical, multi-vector and
    ensemble in-batch; "all": every mode. Labels are then offset by rank: query i's positive
    is column rank*B*G + i*G. In one process all three are the in-batch objective.
    `in_batch_negatives=False` (`local_group_objective`) scores each query against its own group only.
    """
    B, G = q.dense.shape[0], group_size
    device = q.dense.device
    teacher = None
    if teacher_scores is not None:
        teacher = torch.softmax(torch.as_tensor(teacher_scores, dtype=q.dense.dtype, device=device).view(B, G), -1)
    if not in_batch_negatives:
        return local_group_objective(m3_scores(q, p, config, ignore_ids), config, G, step, teacher)
    local = dict(targets=group_targets(B, G, device=device), config=config, step=step,
                 teacher_targets=teacher, group_size=G)
    world = distributed.world_size()
    if world == 1 or config.cross_device == "none":
        return m3_loss(**m3_scores(q, p, config, ignore_ids), **local)
    offset = distributed.rank() * B * G
    if teacher is None:  # labels offset by rank: columns are all ranks' passages in rank order
        targets, order = group_targets(B, G, offset, device=device), (lambda s: s)
    else:  # teacher_kd_loss finds query b's group at column b*G: roll this rank's block first
        targets, order = local["targets"], (lambda s: s.roll(-offset, dims=1))
    if config.cross_device == "all":
        scores = m3_scores(q, distributed.gather_embeddings(p, pad_id), config, ignore_ids)  # (B, W*B*G)
        scores = {k: None if v is None else order(v) for k, v in scores.items()}
        return m3_loss(**scores, **{**local, "targets": targets})
    s_all = order(s_dense(q.dense, distributed.all_gather_with_grad(p.dense)) / config.temperature)  # (B, W*B*G)
    dense_loss = info_nce(s_all, targets) if teacher is None else teacher_kd_loss(s_all, teacher, G,
                                                                                  config.kd_loss_type)
    return m3_loss(**m3_scores(q, p, config, ignore_ids), **local, dense_loss=dense_loss)  # (B, B*G) scores


def local_group_objective(scores: dict, config: M3Config, group_size: int, step: int = 0,
                          teacher_targets: Optional[torch.Tensor] = None) -> dict:
    """M3's objective with no negatives but each query's own group (an official `no_in_batch_neg`
    dataset: classification, clustering): every term of `m3_loss` computed on the (1, G) scores
    of one query, positive at column 0, then averaged over the queries.

    Every term of `m3_loss` is a mean over queries, so this is `m3_loss` on the (B, G) block
    of each query's own passages: s_inter, L_inter and self-distillation included (the M3
    definition; FlagEmbedding 1.4.2 slices the ensemble with G = 1 there, a bug). Teacher scores
    (B, G) distil within the group. The scores come back as (B, G).
    """
    local = {k: None if v is None else local_group_scores(v, group_size) for k, v in scores.items()}  # (B, G)
    B = local["s_dense"].shape[0]
    parts = []
    for b in range(B):
        row = {k: None if v is None else v[b:b + 1] for k, v in local.items()}  # (1, G)
        parts.append(m3_loss(**row, targets=torch.zeros(1, dtype=torch.long, device=local["s_dense"].device),
                             config=config, step=step, group_size=group_size,
                             teacher_targets=None if teacher_targets is None else teacher_targets[b:b + 1]))
    out = {}
    for key, value in parts[0].items():
        if value.dim() == 0:
            out[key] = torch.stack([part[key] for part in parts]).mean()
        else:
            out[key] = torch.cat([part[key] for part in parts])
    return out
