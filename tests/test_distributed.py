"""m3ref.distributed on real process groups: 2 CPU processes with gloo (ch. 09).

Given the same batch, 2 ranks (half of it each) with cross-device negatives and averaged
gradients compute the loss and gradients of 1 process holding the whole batch. The model
runs in float64 with dropout 0, so "equal" means equal to ~1e-14 (float32 padding noise
would be ~1e-6).
"""
import os
import socket
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from m3ref.config import M3Config

WORLD = 2
QUERIES = ["why is the sky blue", "capital of France", "how do bees make honey", "tallest mountain"]
PASSAGES = [["Rayleigh scattering makes the sky look blue.", "Paris is big.", "Sky diving is fun."],
            ["Paris is the capital and largest city of France.", "Bees dance.", "France has many cheeses."],
            ["Bees turn nectar into honey in the hive.", "Blue whales.", "Honey never spoils, they say."],
            ["Mount Everest, on the border of Nepal and China, is the highest mountain above sea level.",
             "Hills.", "Tall trees grow slowly."]]  # the ranks' passages pad to different lengths
TEACHER = [[3.0, 0.5, 1.0], [2.0, 0.1, 1.5], [2.5, 0.3, 0.2], [4.0, 1.0, 0.0]]
# name: (M3Config, use the teacher scores)
SCENARIOS = {
    "dense_only": (M3Config(unified=False, cross_device="dense"), False),
    "all_modes": (M3Config(cross_device="all"), False),
    "all_modes_m3_kd": (M3Config(cross_device="all", kd_loss_type="m3_kd_loss"), True),
    "all_modes_kl_div": (M3Config(cross_device="all", kd_loss_type="kl_div"), True),
    "official_dense": (M3Config(cross_device="dense"), False),  # dense across ranks, lexical/multi-vector local
}


pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.dist, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loss(model, queries, passages, teacher, scenario):
    m3, use_teacher = SCENARIOS[scenario]
    model.zero_grad(set_to_none=True)
    return model.training_loss(queries, passages, m3, 0, teacher if use_teacher else None, 16, 24)


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _worker(rank, port, model_dir, out_dir):
    """One rank: half of the batch in every scenario; rank 0 saves losses and averaged grads.
    Then rank 1 dies, and rank 0's next collective must fail (not hang)."""
    from m3ref import M3Model
    from m3ref.distributed import average_gradients, mean_across_ranks
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=30))
    model = M3Model.from_pretrained(model_dir, device="cpu").double().train()
    n = len(QUERIES) // WORLD
    part = slice(rank * n, (rank + 1) * n)
    results = {}
    for name in SCENARIOS:
        out = _loss(model, QUERIES[part], PASSAGES[part], TEACHER[part], name)
        out["L_final"].backward()
        average_gradients(list(model.parameters()), WORLD)
        keys = [k for k in out if k.startswith("L")]
        local = {k: out[k].item() for k in keys}
        results[name] = {"mean": dict(zip(keys, mean_across_ranks([local[k] for k in keys], "cpu"))),
                         "local": local, "grads": _grads(model)}
    # FlagEmbedding's formulation (dense only): gather queries and passages, the own slices keep
    # the gradient, and every rank computes the loss of all W*B queries
    from m3ref.distributed import all_gather_with_grad
    from m3ref.losses import group_targets, info_nce
    model.zero_grad(set_to_none=True)
    q = model(**model.collate(model.tokenize(QUERIES[part], 16)))
    p = model(**model.collate(model.tokenize([t for g in PASSAGES[part] for t in g], 24)))
    scores = all_gather_with_grad(q.dense, True) @ all_gather_with_grad(p.dense, True).T / 0.02  # (W*B, W*B*G)
    loss = info_nce(scores, group_targets(len(QUERIES), len(PASSAGES[0])))
    loss.backward()
    average_gradients(list(model.parameters()), WORLD)
    results["official_gather"] = {"loss": loss.item(), "grads": _grads(model)}
    dist.barrier()
    if rank == 1:
        os._exit(0)  # dies without leaving the group
    time.sleep(0.5)
    start = time.time()
    try:
        dist.all_reduce(torch.ones(1))
        results["dead_rank"] = "no error"
    except Exception as exc:  # gloo: connection closed by peer, or the timeout
        results["dead_rank"] = f"{type(exc).__name__} after {time.time() - start:.1f}s: {exc}"
    torch.save(results, os.path.join(out_dir, "rank0.pt"))




@pytest.fixture(scope="module")
def two_rank_results(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    mp.spawn(_worker, args=(_free_port(), tiny_dir, str(out)), nprocs=WORLD, join=True)
    return torch.load(out / "rank0.pt", weights_only=True)


@pytest.mark.parametrize("scenario", ["dense_only", "all_modes", "all_modes_m3_kd", "all_modes_kl_div"])
def test_two_ranks_equal_one_process_with_the_whole_batch(scenario, two_rank_results, tiny_dir):
    from m3ref import M3Model
    model = M3Model.from_pretrained(tiny_dir, device="cpu").double().train()
    full = _loss(model, QUERIES, PASSAGES, TEACHER, scenario)
    full["L_final"].backward()
    got = two_rank_results[scenario]
    for k, v in got["mean"].items():
        assert v == pytest.approx(full[k].item(), rel=1e-10), k
    grads = _grads(model)
    assert got["grads"].keys() == grads.keys()
    for name, g in grads.items():
        torch.testing.assert_close(got["grads"][name], g, rtol=1e-8, atol=1e-12, msg=lambda m: f"{name}: {m}")


@pytest.mark.filterwarnings("ignore:.*truncated")
def test_official_dense_cross_device_keeps_other_modes_local(two_rank_results, tiny_dir):
    """cross_device="dense": L_dense sees all ranks' passages, L_lex / L_mul only this rank's."""
    from m3ref import M3Model
    model = M3Model.from_pretrained(tiny_dir, device="cpu").double().eval()
    got, n = two_rank_results["official_dense"], len(QUERIES) // WORLD
    lengths = [max(map(len, model.tokenize([t for g in PASSAGES[i:i + n] for t in g], 24))) for i in (0, n)]
    assert lengths[0] != lengths[1]  # so "all_modes" padded colbert / lexical tensors before gathering
    with torch.no_grad():
        whole = _loss(model, QUERIES, PASSAGES, TEACHER, "official_dense")
        first_half = _loss(model, QUERIES[:n], PASSAGES[:n], TEACHER[:n], "official_dense")
    assert got["mean"]["L_dense"] == pytest.approx(whole["L_dense"].item(), rel=1e-10)
    for k in ("L_lex", "L_mul", "L_inter", "L_prime"):
        assert got["local"][k] == pytest.approx(first_half[k].item(), rel=1e-10), k


@pytest.mark.filterwarnings("ignore:.*truncated")
def test_official_gather_gives_the_exact_gradient_over_world_size(two_rank_results, tiny_dir):
    """FlagEmbedding's `_dist_gather_tensor` + loss over all queries on every rank: the same
    loss, and after averaging over ranks the exact gradient divided by W."""
    from m3ref import M3Model
    model = M3Model.from_pretrained(tiny_dir, device="cpu").double().train()
    full = _loss(model, QUERIES, PASSAGES, TEACHER, "dense_only")
    full["L_final"].backward()
    got = two_rank_results["official_gather"]
    assert got["loss"] == pytest.approx(full["L_final"].item(), rel=1e-10)
    for name, g in _grads(model).items():
        torch.testing.assert_close(got["grads"][name] * WORLD, g, rtol=1e-8, atol=1e-12, msg=lambda m: f"{name}: {m}")


def test_a_dead_rank_makes_the_others_fail_not_hang(two_rank_results):
    msg = two_rank_results["dead_rank"]
    assert msg != "no error" and "Error" in msg, msg
