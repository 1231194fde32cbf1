"""One configuration for M3's scores and losses.

Two presets cover the two published definitions (book chapter 06):

* ``official``: the constants of the official code (FlagEmbedding,
  ``EncoderOnlyEmbedderM3Model.forward``): L' is divided by 3, then the final
  loss by 2.
* ``paper``: the formulas as printed in the arXiv revision of the paper
  (Sec. 3.3): the same weights, but L' is the plain weighted sum, no /3.

Everything else (tau, w, lambda) is shared. Both presets are runnable and the book
compares them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from .errors import M3Error


@dataclass(frozen=True)
class M3Config:
    # Training temperature tau in exp(s / tau). 0.02 is the official default. The paper
    # does not state it. All three scores are divided by the same tau, including s_lex,
    # which is not normalised, so the lexical logits are scaled by 50.
    temperature: float = 0.02
    # w = (w1, w2, w3) in s_inter = w1*s_dense + w2*s_lex + w3*s_mul (paper Sec. 3.3). The
    # official `ensemble_score` hard-codes (1, 0.3, 1).
    ensemble_weights: tuple[float, float, float] = (1.0, 0.3, 1.0)
    # lambda = (l1, l2, l3), the weights of the dense, lexical and multi-vector losses in
    # L and L' (paper Sec. 3.3). The lexical score is not normalised (unbounded), and gets 0.1.
    loss_weights: tuple[float, float, float] = (1.0, 0.1, 1.0)
    # L = (l1*L_dense + l2*L_lex + l3*L_mul + L_inter) / l_divisor (paper Sec. 3.3; code agrees).
    l_divisor: float = 4.0
    # L' = (l1*L'_dense + l2*L'_lex + l3*L'_mul) / l_prime_divisor. 3 in the official
    # code, 1 in the paper (Sec. 3.3).
    l_prime_divisor: float = 3.0
    # L_final = (L + L') / l_final_divisor (paper Sec. 3.3; code agrees).
    l_final_divisor: float = 2.0
    # Train the lexical and multi-vector heads too (M3's "unified fine-tuning"). When False,
    # only L_dense is optimised, as in the official `unified_finetuning=False`.
    unified: bool = True
    # Self-knowledge distillation (paper Sec. 3.3) on or off.
    self_distill: bool = True
    # L' is added only when step > self_distill_start_step. The official default is -1
    # ("from the first step"). Users report that a late start lets sparse weights collapse.
    self_distill_start_step: int = -1
    # Output size of the ColBERT projection. -1 keeps the encoder's hidden size, as BGE-M3 does.
    colbert_dim: int = -1
    # The official batched ColBERT score takes its max over padded passage positions too
    # (zero vectors, similarity 0). False = the paper's definition (max over real tokens).
    colbert_max_over_padding: bool = False
    # Multiple CLS (paper App. B.2): one extra [CLS] every `mcls_stride` tokens for long
    # documents at inference time.
    mcls_stride: int = 256
    # Name of the preset this config came from, for logs and the book.
    preset: str = field(default="official")

    def __post_init__(self):
        if self.temperature <= 0:
            raise M3Error(f"temperature must be > 0, got {self.temperature}")
        for name in ("ensemble_weights", "loss_weights"):
            if len(getattr(self, name)) != 3:
                raise M3Error(f"{name} needs 3 values (dense, lexical, multi-vector)")
        if self.mcls_stride < 1:
            raise M3Error(f"mcls_stride must be >= 1, got {self.mcls_stride}")

    @classmethod
    def official(cls, **overrides) -> "M3Config":
        """The official code's constants (FlagEmbedding 1.4.2, `m3/modeling.py`).

        The official batched ColBERT max over padding is a quirk, not a constant, so it stays
        off here: pass `colbert_max_over_padding=True` to reproduce it too."""
        return cls(**{"preset": "official", **overrides})

    @classmethod
    def paper(cls, **overrides) -> "M3Config":
        """The paper's Sec. 3.3 formulas as printed (arXiv 2402.03216, revision with weights)."""
        return cls(**{"preset": "paper", "l_prime_divisor": 1.0, **overrides})

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "M3Config":
        if name not in ("official", "paper"):
            raise M3Error(f"unknown preset {name!r}: choose 'official' or 'paper'")
        return getattr(cls, name)(**overrides)

    def replace(self, **changes) -> "M3Config":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """The constants of the loss on one line (how ch. 00 and ch. 06 print the presets)."""
        return (f"{self.preset:>8}: tau = {self.temperature}, w = {self.ensemble_weights}, "
                f"lambda = {self.loss_weights}, L/{self.l_divisor:g}, L'/{self.l_prime_divisor:g}, "
                f"L_final = (L + L')/{self.l_final_divisor:g}")
