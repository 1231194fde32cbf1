import sys; import os; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nb import md, code, write

cells = [
md(r"""
# Multi-GPU training

The paper trains on 96 GPUs in the unsupervised stage and on 24 in fine-tuning (App. B.1).
Each GPU runs one process (a *rank*) with its own share of the batch. Sec. 3.4 adds one idea
beyond plain data parallelism: the embeddings of all GPUs are shared, so each query is scored
against the passages of every GPU. These are *cross-device negatives*. They multiply the
in-batch negatives by the number of GPUs at almost no cost.

This chapter:

1. writes down cross-device negatives and the gradient they need;
2. launches two real processes on the CPU (backend gloo) with `torchrun` and checks that they
   compute what one process with the whole batch computes;
3. shows the commands for GPUs (backend NCCL), on one node and on two;
4. compares with how the official code gathers, which scales one gradient by $1/W$;
5. looks at the checkpoints of a run, and resumes one.
"""),
code(r"""
import contextlib
import io
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml

from m3ref.book import quiet, show, tiny_model_dir
from m3ref.distributed import _AllGather, all_gather_with_grad, average_gradients, m3_loss_across_ranks, setup
from m3ref.errors import M3Error
from m3ref.losses import group_targets, info_nce
from m3ref.tiny import SOURCE_DIR
from m3ref.train import load_config, train

quiet()
torch.set_num_threads(1)  # as each torchrun worker (OMP_NUM_THREADS=1); also kinder to a busy machine
ROOT = Path(SOURCE_DIR).parents[1]  # the repository
"""),
md(r"""
## Cross-device negatives

There are $W$ ranks. Rank $r$ holds $B$ queries $Q_r$ and their $B \cdot G$ passages $P_r$,
positive first in each group (chapter 5). It gathers the passages of all ranks in rank
order, $P = [P_0; P_1; \dots; P_{W-1}]$, and scores its queries against all of them:

$$
S^{(r)} = Q_r P^\top / \tau \in \mathbb{R}^{B \times W B G}, \qquad
\text{target of query } i \text{ on rank } r = r B G + i G
$$

Every query now has $WBG - 1$ negatives instead of $BG - 1$. The loss of the step is the
mean over ranks of their losses, $\mathcal{L} = \frac{1}{W} \sum_r \mathcal{L}^{(r)}$, which
is the mean over all $WB$ queries, as if one process held the whole batch.

**By hand.** $W = 2$, $B = 2$, $G = 2$. Rank 1's passages start at column $1 \cdot 2 \cdot 2 = 4$,
so its two queries have their positives in columns 4 and 6.
"""),
code(r"""
print(group_targets(2, 2, offset=1 * 2 * 2).tolist())
assert group_targets(2, 2, offset=4).tolist() == [4, 6]
"""),
md(r"""
The gradient needs care. Rank $s$'s passages $P_s$ enter *every* rank's loss, but only rank
$s$ can backpropagate into the encoder that produced them. So rank $s$ must receive the sum
over ranks of the gradient with respect to its slice,

$$
\frac{\partial \mathcal{L}}{\partial P_s} = \frac{1}{W} \sum_{r=0}^{W-1} \frac{\partial \mathcal{L}^{(r)}}{\partial P_s}
$$

`all_gather_with_grad` does this. Forward, it is an all-gather. Backward, it all-reduces
(sums) the gradient of the gathered tensor and hands each rank its own slice. The $1/W$ comes
from `average_gradients`, which averages the parameter gradients once per step (what
`DistributedDataParallel` would do):
"""),
code(r"""
show(_AllGather, all_gather_with_grad, average_gradients)
"""),
md(r"""
`m3_loss_across_ranks` builds the whole M3 loss of one rank. With `cross_device="dense"`
only $s_{dense}$ is scored against all ranks' passages. This is the official choice:
FlagEmbedding's `negatives_cross_device` is off by default, its fine-tuning examples switch it
on, and it then applies to the dense score only. The lexical and
multi-vector scores, the ensemble and self-distillation stay in-batch on each rank. With
`"all"`, every score crosses devices:
"""),
code(r"""
show(m3_loss_across_ranks)
"""),
md(r"""
## Two real processes

`python -m m3ref.train` runs on one process, or on many under `torchrun`. `setup()` reads
the variables `torchrun` sets (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`) and joins the process
group, with NCCL on GPUs and gloo on CPUs:
"""),
code(r"""
show(setup)
"""),
md(r"""
We run the tiny config for 2 steps on 2 CPU processes: step 1 is the dense-only stage, step 2
unified fine-tuning (chapter 7). Then we run the same steps on 1 process with twice the
per-process batch. Three changes to `configs/tiny.yaml` make the two runs comparable number
for number:

* `cross_device: all`, so that every score sees the passages of both ranks, as the one
  process sees all of them. With the official `dense`, step 1 would match too (it has only
  the dense loss), but in step 2 the lexical and multi-vector losses would see fewer
  negatives on 2 ranks.
* a copy of the tiny model **with dropout 0**. Each rank seeds its dropout differently
  (`seed + rank`, as nanoGPT does), so the masks of 2 ranks cannot equal those of 1 process.
* `tensorboard: false`, to write nothing but the log and the checkpoints.

The rest needs no change. The sampler cuts the same global batches whatever the number of
ranks (chapter 8), and each example's group of passages comes from its own seeded generator
(chapter 7).
"""),
code(r"""
work = Path(tempfile.mkdtemp())
model_dir = work / "tiny-nodrop"
shutil.copytree(tiny_model_dir(), model_dir)
config = json.loads((model_dir / "config.json").read_text())
config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
(model_dir / "config.json").write_text(json.dumps(config))

cfg = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
cfg.update(model=str(model_dir), cross_device="all", tensorboard=False,
           train_data=str(ROOT / cfg["train_data"]), dense_train_data=str(ROOT / cfg["dense_train_data"]))
(work / "tiny-2ranks.yaml").write_text(yaml.safe_dump(cfg))
print({k: cfg[k] for k in ("dense_batch_size", "batch_size", "group_size", "cross_device", "sub_batch_size")})
"""),
md(r"""
The launch is the command line below. `torchrun` is a script that runs
`python -m torch.distributed.run`; we call the module with the notebook's Python.
`--standalone` starts a rendezvous on this machine and picks a free port. Starting two
Python processes that import PyTorch takes a while, so we start them in the background and
run the one-process comparison (below) in the meantime.

```
torchrun --standalone --nproc_per_node=2 -m m3ref.train --config tiny-2ranks.yaml \
    --max-steps 2 --save-every 1 --output-dir OUT/two
```
"""),
code(r"""
cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
       "-m", "m3ref.train", "--config", str(work / "tiny-2ranks.yaml"),
       "--max-steps", "2", "--save-every", "1", "--output-dir", str(work / "two")]
log = open(work / "two.stderr", "w")
launch = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)  # runs in the background
print("started")
"""),
md(r"""
Meanwhile, one process, in the notebook, with the per-process batch sizes doubled (16 pairs
in the dense stage, 8 queries in fine-tuning). Its progress bar goes to a buffer:
"""),
code(r"""
one_cfg = load_config(str(work / "tiny-2ranks.yaml"), output_dir=str(work / "one"), max_steps=2, save_every=1,
                      dense_batch_size=2 * cfg["dense_batch_size"],
                      batch_size={k: 2 * v for k, v in cfg["batch_size"].items()})
with contextlib.redirect_stderr(io.StringIO()):
    train(one_cfg)
one = [json.loads(line) for line in (work / "one" / "train_log.jsonl").read_text().splitlines()]
print("one process: done")
"""),
md(r"""
Now we wait for the two processes. Rank 0 wrote one line per step to `train_log.jsonl`, and
its last message on the standard error is `saved OUTPUT_DIR/final`:
"""),
code(r"""
status = launch.wait()
log.close()
print("exit status", status)
print(next(line for line in (work / "two.stderr").read_text().splitlines() if line.startswith("saved"))
      .replace(str(work), "OUT"))
assert status == 0
two = [json.loads(line) for line in (work / "two" / "train_log.jsonl").read_text().splitlines()]


print(f"{'step':>4} {'stage':>8} {'queries':>7} {'':>10} {'L_final':>10} {'L_dense':>10} {'L_mul':>10} {'grad norm':>10}")
for a, b in zip(two, one):
    for label, r in (("2 ranks", a), ("1 process", b)):
        values = [r[k] for k in ("L_final", "L_dense", "L_mul", "grad_norm")]
        print(f"{r['step']:4d} {r['stage']:>8} {r['queries']:7d} {label:>10} "
              + " ".join("      None" if v is None else f"{v:10.4f}" for v in values))
    for k in ("L_final", "L_dense", "L_lex", "L_mul", "L_prime", "grad_norm"):
        if a[k] is not None:
            assert abs(a[k] - b[k]) <= 1e-5 * max(1.0, abs(b[k])), (a["step"], k)
print("every loss term and the gradient norm agree to a relative 1e-5")
"""),
md(r"""
The same losses and the same gradient norm (the norm of the averaged gradient, before
clipping), in both stages. They agree up to float32 rounding, a few units in the 6th or 7th
digit: the two runs pad and add in different orders. Step 2 also starts from the weights
that step 1 produced, so the optimizer steps agree as well. The test suite checks the
same more strictly, in float64 and for every parameter's gradient
(`tests/test_distributed.py`).

## The same command on GPUs

On GPUs nothing changes in the code. `setup()` finds CUDA, uses the NCCL backend and puts
rank $r$ of a node on GPU `LOCAL_RANK`. One node with 8 GPUs:

```
torchrun --nproc_per_node=8 -m m3ref.train --config configs/bge-m3-gpu.yaml --train-data DATA_DIR
```

Two nodes with 8 GPUs each: start the same command on both nodes. They meet at a rendezvous
endpoint, a host and port that both can reach (here node 0's address):

```
torchrun --nnodes=2 --nproc_per_node=8 --rdzv-id=m3 --rdzv-backend=c10d \
    --rdzv-endpoint=NODE0_HOST:29400 -m m3ref.train --config configs/bge-m3-gpu.yaml
```

`OUTPUT_DIR` should then be on a file system that both nodes see: each rank writes its own
RNG state into the checkpoints. With 8 GPUs on each of 3 nodes ($W = 24$), the per-GPU
batch sizes of the config give the paper's fine-tuning batch sizes (chapter 8). A rank that
dies makes the others fail, at the latest after `dist_timeout_s`, instead of waiting for ever.

## How the official code gathers

FlagEmbedding gathers differently (`_dist_gather_tensor`, read from its source, see the
project notes). It gathers queries *and* passages without gradient, puts its own tensors back
into its slot so that they keep their gradient, and computes the loss of all $WB$ queries on
every rank:

$$
\mathcal{L}^{(r)}_{official} = \text{InfoNCE}\big([Q_0; \dots; Q_{W-1}]\,[P_0; \dots; P_{W-1}]^\top / \tau\big),
\quad \text{gradient only through } Q_r, P_r
$$

Each rank's loss equals the full loss. But rank $r$ backpropagates only the part of the
gradient that flows through its own slices, and DDP then *averages* over ranks. Each slice's
gradient is counted once, and then divided by $W$: the result is the exact gradient divided
by $W$. We can emulate the $W$ ranks in one process with hand-made embeddings. `detach()`
plays the role of "gathered without gradient":
"""),
code(r"""
torch.manual_seed(0)
W, B, G, tau = 2, 2, 2, 0.05
q = torch.randn(W * B, 8, dtype=torch.float64, requires_grad=True)  # all ranks' queries
p = torch.randn(W * B * G, 8, dtype=torch.float64, requires_grad=True)  # all ranks' passages

full = info_nce(q @ p.T / tau, group_targets(W * B, G))  # one process, whole batch
g_full = torch.autograd.grad(full, (q, p))

# m3ref: rank r scores its own queries against all passages; the step's loss is the mean
ours = sum(info_nce(q[r * B:(r + 1) * B] @ p.T / tau, group_targets(B, G, offset=r * B * G)) for r in range(W)) / W
g_ours = torch.autograd.grad(ours, (q, p))

def own_slice(x, r, n):  # rank r's view after the official gather: only its own slice has a gradient
    return torch.cat([x[s * n:(s + 1) * n] if s == r else x[s * n:(s + 1) * n].detach() for s in range(W)])

g_official = [torch.zeros_like(q), torch.zeros_like(p)]
for r in range(W):
    loss_r = info_nce(own_slice(q, r, B) @ own_slice(p, r, B * G).T / tau, group_targets(W * B, G))
    assert abs(loss_r.item() - full.item()) < 1e-12  # every rank computes the full loss
    for acc, g in zip(g_official, torch.autograd.grad(loss_r, (q, p))):
        acc += g / W  # DDP averages the gradients of the ranks

print(f"loss: one process {full.item():.6f}, m3ref {ours.item():.6f}")
for name, gf, go, gc in zip(("queries", "passages"), g_full, g_ours, g_official):
    print(f"gradient of the {name}: m3ref / exact = {(go / gf).mean().item():.4f}, "
          f"official / exact = {(gc / gf).mean().item():.4f}")
    assert torch.allclose(go, gf) and torch.allclose(gc * W, gf)
"""),
md(r"""
The official loss is right and its gradient points the right way, but it is $1/W$ of the
exact one. `tests/test_distributed.py` checks this on 2 real processes with the model's
gradients (`test_official_gather_gives_the_exact_gradient_over_world_size`).

> **Read from the code, not run here.** In the dense-only stage, a factor $1/W$ on the whole
> gradient does little: Adam's updates do not depend on a constant gradient scale (up to its
> $\epsilon$), though gradient clipping then starts later. In unified fine-tuning, only
> $\mathcal{L}_{dense}$ is computed across devices. The lexical, multi-vector, ensemble and
> self-distillation losses are computed in-batch on each rank, and their gradients are exact.
> So in $\mathcal{L} = (\mathcal{L}_{dense} + 0.1\,\mathcal{L}_{lex} + \mathcal{L}_{mul} + \mathcal{L}_{inter})/4$
> the gradient of $\mathcal{L}_{dense}$ weighs $1/W$ against the other terms: $1/24$ on the
> paper's 24 fine-tuning GPUs. The loss values that are logged do not show it. `m3ref`
> computes the exact gradient, so its runs weigh the terms as the formula says. To
> reproduce the official weighting, scale `L_dense` by $1/W$.

## Checkpoints and resume

A run writes `OUTPUT_DIR/checkpoint-N` every `save_every` steps and `OUTPUT_DIR/final` at
the end. Each is first written to a temporary folder and then renamed, so a crash while
writing never replaces the last good checkpoint. The 2-rank run:
"""),
code(r"""
out = work / "two"
print(sorted(p.name for p in out.iterdir()))
for name in ("checkpoint-1", "final"):
    print(f"{name}: {sorted(p.name for p in (out / name).iterdir())}")
state = json.loads((out / "final" / "trainer_state.json").read_text())
print({k: state[k] for k in ("step", "stage", "sampler", "world_size")})
"""),
md(r"""
* `config.json`, `model.safetensors`, `tokenizer*.json`, `colbert_linear.pt`,
  `sparse_linear.pt`: the official BGE-M3 layout, which FlagEmbedding's `BGEM3FlagModel`
  loads as it is (chapter 0);
* `optimizer.pt`: AdamW's moments (and the fp16 grad scaler's state);
* `rng_state_0.pt`, `rng_state_1.pt`: the random state of each rank;
* `trainer_state.json`: the step (the learning rate is a function of it), the stage, the
  sampler's position, the world size and the config.

`--resume` (or `--resume CHECKPOINT_DIR`) continues from the latest checkpoint of
`OUTPUT_DIR`, with the same number of ranks. We resume the one-process run from step 1 and
compare its step 2 with the run that was not interrupted:
"""),
code(r"""
uninterrupted = one[1]
with contextlib.redirect_stderr(io.StringIO()):
    train(one_cfg, resume=str(work / "one" / "checkpoint-1"))
resumed = [json.loads(line) for line in (work / "one" / "train_log.jsonl").read_text().splitlines()]
print([r["step"] for r in resumed], "steps in the log after the resume")
for k in ("L_final", "L_dense", "grad_norm"):
    print(f"step 2 {k:9}: uninterrupted {uninterrupted[k]:.4f}, resumed {resumed[1][k]:.4f}")
    assert abs(uninterrupted[k] - resumed[1][k]) < 1e-5 * max(1.0, abs(uninterrupted[k]))
shutil.rmtree(work)  # the runs' files are no longer needed
"""),
md(r"""
The resumed step 2 is the step that the uninterrupted run took: the same batch (sampler
position), the same weights and optimizer state, and the same learning rate.

## Summary

* Cross-device negatives score each query against the passages of all $W$ ranks: $WBG - 1$
  negatives per query. Labels are offset by $rBG$ on rank $r$.
* `all_gather_with_grad` sums the gradient of each slice over ranks in its backward. With the
  gradients averaged, 2 ranks compute the loss and gradient of 1 process holding the whole
  batch. We checked this on two real gloo processes started with `torchrun`.
* On GPUs the same command uses NCCL. Several nodes meet at a `c10d` rendezvous endpoint.
* The official code gathers with the gradient of the local slice only. That gives the exact
  gradient divided by $W$, and in unified fine-tuning it weighs $\mathcal{L}_{dense}$ by $1/W$
  against the other terms (read from the code).
* Checkpoints use the official model layout plus the optimizer, sampler, step and per-rank
  RNG states. A resume repeats exactly the steps that were lost.

## Exercises

1. With $W = 24$, $B = 48$ and $G = 8$, how many negatives does one query have with cross-device negatives, and how many without?
2. Run the 2-rank command again with `cross_device: dense`. Which logged losses change at step 2 compared with the one-process run, and which do not?
3. Why does `m3_loss_across_ranks` roll the score columns by $-rBG$ when teacher scores are used?
4. What goes wrong if each rank uses its own seed for the `BucketSampler`?

```{admonition} Solutions
:class: dropdown

1. With: $WBG - 1 = 24 \cdot 48 \cdot 8 - 1 = 9{,}215$. Without: $BG - 1 = 383$.
2. `L_dense` stays the same, as it still sees both ranks' passages. `L_lex`, `L_mul`, `L_inter` and the self-distillation terms change: each rank sees only its own 4 queries' passages. So does `L_final`. Step 1 (dense only) is unchanged.
3. `teacher_kd_loss` expects query $b$'s group at columns $bG \dots bG + G - 1$. On rank $r$ the group is at $rBG + bG$. Rolling the columns by $-rBG$ moves this rank's block to the front and keeps every other column.
4. At a step, the ranks would draw from different buckets: one encodes 8,000-token documents while the others wait. Worse, the slices would no longer come from one global batch, so some examples would be used twice and others not at all in an epoch.
```
"""),
]
write(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "09_multi_gpu.ipynb"), cells)
