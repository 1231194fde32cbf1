"""The losses of paper Sec. 3.3, by hand, for both presets."""
import math

import pytest
import torch

from m3ref.config import M3Config
from m3ref.errors import M3Error
from m3ref.losses import (group_targets, info_nce, local_group_scores, loss_final, loss_L, loss_L_prime, m3_loss,
                          self_distill_loss, teacher_kd_loss)


def log_softmax(xs, i):
    return xs[i] - math.log(sum(math.exp(x) for x in xs))


def test_group_targets_point_at_each_positive():
    assert group_targets(3, 4).tolist() == [0, 4, 8]
    assert group_targets(2, 2, offset=4).tolist() == [4, 6]


def test_info_nce_by_hand():
    scores = torch.tensor([[2.0, 0.0, 1.0, -1.0], [0.5, 0.5, 3.0, 0.0]])  # B=2, G=2
    targets = group_targets(2, 2)  # [0, 2]
    want = -(log_softmax([2.0, 0.0, 1.0, -1.0], 0) + log_softmax([0.5, 0.5, 3.0, 0.0], 2)) / 2
    assert info_nce(scores, targets).item() == pytest.approx(want, rel=1e-6)


def test_self_distillation_by_hand_and_teacher_is_detached():
    teacher = torch.tensor([[1.0, 0.0]], requires_grad=True)
    student = torch.tensor([[0.0, 2.0]], requires_grad=True)
    p = [math.exp(1) / (math.exp(1) + 1), 1 / (math.exp(1) + 1)]
    want = -(p[0] * log_softmax([0.0, 2.0], 0) + p[1] * log_softmax([0.0, 2.0], 1))
    loss = self_distill_loss(student, teacher)
    assert loss.item() == pytest.approx(want, rel=1e-6)
    loss.backward()
    assert teacher.grad is None and student.grad is not None


@pytest.mark.parametrize("preset,l_prime_divisor", [("official", 3.0), ("paper", 1.0)])
def test_combinations_for_both_presets(preset, l_prime_divisor):
    cfg = M3Config.from_preset(preset)
    assert cfg.l_prime_divisor == l_prime_divisor
    L = loss_L(1.0, 2.0, 3.0, 4.0, cfg)
    assert L == pytest.approx((1.0 + 0.1 * 2.0 + 3.0 + 4.0) / 4)
    Lp = loss_L_prime(1.0, 2.0, 3.0, cfg)
    assert Lp == pytest.approx((1.0 + 0.1 * 2.0 + 3.0) / l_prime_divisor)
    assert loss_final(L, Lp, cfg) == pytest.approx((L + Lp) / 2)


def test_unknown_preset_and_bad_values_are_clear_errors():
    with pytest.raises(M3Error, match="unknown preset"):
        M3Config.from_preset("v3")
    with pytest.raises(M3Error, match="temperature"):
        M3Config(temperature=0)


def test_m3_loss_switches_self_distillation_on_after_the_start_step():
    g = torch.Generator().manual_seed(0)
    d, l, m = (torch.randn(2, 4, generator=g) for _ in range(3))
    t = group_targets(2, 2)
    cfg = M3Config(self_distill_start_step=5)
    before, after = m3_loss(d, l, m, t, cfg, step=5), m3_loss(d, l, m, t, cfg, step=6)
    assert before["L_final"].item() == pytest.approx(before["L"].item())
    assert after["L_final"].item() == pytest.approx((after["L"] + after["L_prime"]).item() / 2)
    inter = d + 0.3 * l + m
    assert torch.allclose(after["s_inter"], inter)
    assert after["L_inter"].item() == pytest.approx(info_nce(inter, t).item())
    dense_only = m3_loss(d, None, None, t, M3Config(unified=False))
    assert dense_only["L_final"].item() == pytest.approx(info_nce(d, t).item())


def test_m3_kd_loss_by_hand():
    # B=1, G=2: columns [pos, neg]; teacher probabilities t = (0.75, 0.25)
    scores = torch.tensor([[1.0, 0.0]])
    t = torch.tensor([[0.75, 0.25]])
    # k=0: CE over both columns, target 0; k=1: column 0 masked out, target 1 -> CE = 0
    want = 0.75 * -log_softmax([1.0, 0.0], 0) + 0.25 * 0.0
    assert teacher_kd_loss(scores, t, 2, "m3_kd_loss").item() == pytest.approx(want, rel=1e-6)
    # kl_div: -sum t * log_softmax(local) + InfoNCE
    kl = -(0.75 * log_softmax([1.0, 0.0], 0) + 0.25 * log_softmax([1.0, 0.0], 1))
    want_kl = kl - log_softmax([1.0, 0.0], 0)
    assert teacher_kd_loss(scores, t, 2, "kl_div").item() == pytest.approx(want_kl, rel=1e-6)


def test_local_group_scores_picks_each_querys_own_passages():
    s = torch.arange(8.0).view(2, 4)  # B=2, G=2
    assert local_group_scores(s, 2).tolist() == [[0.0, 1.0], [6.0, 7.0]]
