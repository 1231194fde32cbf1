"""m3ref.train: config errors, logs, checkpoints, resume, NaN stop, torchrun end to end (ch. 08-09)."""
import json
import re
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from m3ref.errors import M3Error, M3Warning
from m3ref.config import TrainConfig, load_config
from m3ref.train import LOSS_KEYS, latest_checkpoint, main, train

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    """Stage-1 pairs and stage-2 groups (some with teacher scores), in length-tagged files."""
    src = [json.loads(line) for line in (ROOT / "data_samples/source/en.jsonl").read_text().splitlines()][:40]
    root = tmp_path_factory.mktemp("data")
    files = {"unsup/pairs_len-0-500": [{"query": r["title"], "pos": [r["passage"]], "neg": []} for r in src[:24]]}
    ft = [{"query": r["query"], "pos": [r["passage"]],
           "neg": [r["related"], src[i - 1]["passage"], src[i - 2]["passage"]]} for i, r in enumerate(src)]
    files["finetune/ft_len-0-500"] = ft[:12]
    files["finetune/ftkd_len-0-500"] = [dict(r, pos_scores=[1.0], neg_scores=[0.6, 0.1, 0.2]) for r in ft[12:24]]
    files["finetune/long_len-1000-2000"] = [dict(r, pos=[" ".join(x["passage"] for x in src[:8])]) for r in ft[24:30]]
    for name, rows in files.items():
        (root / name).parent.mkdir(exist_ok=True)
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _cfg(toy_data, tiny_dir, out, **kw):
    values = dict(model=tiny_dir, train_data=str(toy_data / "finetune"), dense_train_data=str(toy_data / "unsup"),
                  output_dir=str(out), query_max_len=16, passage_max_len=32, dense_steps=1, dense_batch_size=6,
                  group_size=3, batch_size={0: 3, 1000: 2}, teacher_kd=True, max_steps=4, lr=1e-4,
                  precision="fp32", save_every=2, tensorboard=False)
    return TrainConfig(**{**values, **kw})


def _log(out):
    return [json.loads(line) for line in (Path(out) / "train_log.jsonl").read_text().splitlines()]


def test_bad_config_and_bad_data_are_one_line_errors(toy_data, tiny_dir, tmp_path, capsys):
    with pytest.raises(M3Error, match=r"config: lr=-1: must be > 0"):
        _cfg(toy_data, tiny_dir, tmp_path, lr=-1).check()
    with pytest.raises(M3Error, match="precision='fp8'"):
        _cfg(toy_data, tiny_dir, tmp_path, precision="fp8").check()
    with pytest.raises(M3Error, match="batch_size"):
        _cfg(toy_data, tiny_dir, tmp_path, batch_size={0: 0}).check()
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("max_steps: 3\nlearning_rate: 0.1\n")
    with pytest.raises(M3Error, match="unknown config key 'learning_rate'"):
        load_config(str(cfg_file))
    bad = tmp_path / "bad_len-0-500.jsonl"
    bad.write_text('{"query": "q", "pos": ["p"], "neg": ["n"]}\n{"query": "q", "pos": "p"}\n')
    cfg_file.write_text(f"model: {tiny_dir}\ngroup_size: 2\noutput_dir: {tmp_path / 'run'}\n")
    with pytest.raises(SystemExit) as exc:
        main(["--config", str(cfg_file), "--train-data", str(bad)])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: ") and "bad_len-0-500.jsonl:2" in err
    assert not (tmp_path / "run").exists()  # stopped before any compute or output
    with pytest.raises(SystemExit):
        main(["--config", str(cfg_file), "--train-data", str(tmp_path / "missing.jsonl")])
    assert "train_data" in capsys.readouterr().err


@pytest.mark.slow
def test_log_lines_and_resume_equals_uninterrupted(toy_data, dropout_dir, tmp_path):
    """Dropout is on (the RNG states are restored); the checkpoint is mid-way in stage 2."""
    tiny_dir = dropout_dir
    a, b = tmp_path / "a", tmp_path / "b"
    final = train(_cfg(toy_data, tiny_dir, a))
    log = _log(a)
    assert [r["step"] for r in log] == [1, 2, 3, 4] and [r["stage"] for r in log] == ["dense"] + ["unified"] * 3
    assert all(k in r for r in log for k in ("step", "lr", *LOSS_KEYS))
    unified = [k for k in LOSS_KEYS if k not in ("L_enc", "L_dec")]  # RetroMAE's terms are None here
    assert log[0]["L_lex"] is None and all(math.isfinite(r[k]) for r in log[1:] for k in unified)
    assert sorted(p.name for p in a.iterdir() if p.is_dir()) == ["checkpoint-2", "final"]
    assert latest_checkpoint(a) == final
    # a run "killed" after step 2: only checkpoint-2 is left; --resume picks the latest
    shutil.copytree(a / "checkpoint-2", b / "checkpoint-2")
    cfg_file = tmp_path / "b.yaml"
    cfg_file.write_text(yaml.safe_dump(_cfg(toy_data, tiny_dir, b).to_dict()))
    main(["--config", str(cfg_file), "--resume", "--save-every", "0"])
    resumed = _log(b)
    assert [r["step"] for r in resumed] == [3, 4]
    for before, after in zip(log[2:], resumed):
        for k in (*unified, "lr", "grad_norm"):
            assert after[k] == pytest.approx(before[k], rel=1e-6, abs=1e-9), (after["step"], k)
    wa = torch.load(a / "final" / "sparse_linear.pt", weights_only=True)
    wb = torch.load(b / "final" / "sparse_linear.pt", weights_only=True)
    torch.testing.assert_close(wa, wb)


@pytest.mark.slow
def test_interrupted_checkpoint_write_keeps_the_previous_one(toy_data, tiny_dir, tmp_path, monkeypatch):
    import m3ref.tiny
    from m3ref import M3Model
    built = []
    monkeypatch.setattr(m3ref.tiny, "build_tiny_model",  # model: null builds the tiny model (here: a copy)
                        lambda out, seed: built.append((out, seed)) or shutil.copytree(tiny_dir, out))
    calls, save = [], M3Model.save_pretrained

    def dies_during_second_save(self, out_dir):
        save(self, out_dir)  # the model files are written ...
        calls.append(out_dir)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed mid-write")  # ... then the process is killed

    monkeypatch.setattr(M3Model, "save_pretrained", dies_during_second_save)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(toy_data, tiny_dir, tmp_path, save_every=1, dense_steps=0, model=None, seed=5))
    assert built == [(str(tmp_path / ".tmp-init"), 5)]  # written under a temporary name, then renamed
    assert (tmp_path / "init" / "config.json").is_file()
    assert (tmp_path / ".tmp-checkpoint-2").is_dir() and not (tmp_path / "checkpoint-2").exists()
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-1"
    model = M3Model.from_pretrained(tmp_path / "checkpoint-1", device="cpu")
    assert model.sparse_linear.weight.shape == (1, 128)
    monkeypatch.undo()
    with pytest.warns(M3Warning) as caught:  # resumed with another config: both changes are named
        train(_cfg(toy_data, tiny_dir, tmp_path, save_every=0, dense_steps=0, max_steps=3), resume="latest")
    notes = [str(w.message) for w in caught]
    assert len(notes) == 2 and "with max_steps=4 -> 3" in notes[0]
    assert re.search(r"with another config \(model: None -> '\S+'; seed: 5 -> 0\)", notes[1])
    assert [r["step"] for r in _log(tmp_path)] == [1, 2, 3]
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["checkpoint-1", "final", "init"]


def test_nan_loss_stops_with_a_clear_message(toy_data, tiny_dir, tmp_path, monkeypatch):
    from m3ref.model import M3Model
    calls, real = [], M3Model.training_loss

    def nan_at_third_step(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            out["L_final"] = out["L_final"] * float("nan")
        return out

    monkeypatch.setattr(M3Model, "training_loss", nan_at_third_step)
    with pytest.raises(M3Error, match=r"step 3: L_final = nan is not finite; stopped\. Last good checkpoint: .*-2"):
        train(_cfg(toy_data, tiny_dir, tmp_path, save_every=1, max_steps=5))
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-2"
    assert [r["step"] for r in _log(tmp_path)] == [1, 2]


@pytest.mark.dist
@pytest.mark.slow
def test_torchrun_two_ranks_end_to_end(tmp_path, tiny_dir):
    """The documented command; the final checkpoint loads in m3ref and in FlagEmbedding."""
    out = tmp_path / "run"
    # configs/tiny.yaml has model: null, so rank 0 would build_tiny_model(OUTPUT_DIR/init, seed=0):
    # the session's tiny_dir is that very model, put in place to skip the tokenizer training.
    shutil.copytree(tiny_dir, out / "init")
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "m3ref.train",
           "--config", "configs/tiny.yaml", "--max-steps", "3", "--output-dir", str(out)]
    if not (ROOT / "data_samples/train/finetune").is_dir():  # sample data not generated yet
        pytest.skip("data_samples/train is missing (python data_samples/make_samples.py)")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = _log(out)
    assert [r["step"] for r in log] == [1, 2, 3] and all(math.isfinite(r["L_final"]) for r in log)
    assert json.loads((out / "final" / "trainer_state.json").read_text())["world_size"] == 2

    from FlagEmbedding import BGEM3FlagModel

    from m3ref import M3Model
    texts = ["Why is the sky blue?", "Der Himmel ist blau."]
    ours = M3Model.from_pretrained(out / "final", device="cpu").encode(texts)
    flag = BGEM3FlagModel(str(out / "final"), use_fp16=False, devices="cpu")
    theirs = flag.encode(texts, return_sparse=True, return_colbert_vecs=True)
    torch.testing.assert_close(torch.tensor(theirs["dense_vecs"]), torch.tensor(ours.dense), atol=1e-5, rtol=1e-4)
    assert theirs["lexical_weights"][0].keys() == {str(k) for k in ours.sparse[0]}


def test_train_data_may_list_several_paths(toy_data, tmp_path):
    from m3ref.train import _stage_data
    short = [str(p) for p in sorted((toy_data / "finetune").glob("ft*_len-0-500.jsonl"))]
    cfg = _cfg(toy_data, None, tmp_path, train_data=short)
    cfg.check()
    assert sorted(_stage_data(cfg)["unified"]) == ["ft_len-0-500", "ftkd_len-0-500"]  # no long file
    with pytest.raises(M3Error, match="missing.jsonl: no such file"):
        _cfg(toy_data, None, tmp_path, train_data=short + [str(tmp_path / "missing.jsonl")]).check()
    with pytest.raises(M3Error, match="a second data file named 'ft_len-0-500'"):
        _stage_data(_cfg(toy_data, None, tmp_path, train_data=short + short[:1]))


def test_head_lr_scale_zero_freezes_the_heads_only(toy_data, tiny_dir, tmp_path):
    final = train(_cfg(toy_data, tiny_dir, tmp_path, dense_steps=0, max_steps=2, lr=1e-3, head_lr_scale=0.0,
                       save_every=0))
    for name in ("sparse_linear", "colbert_linear"):
        before = torch.load(Path(tiny_dir) / f"{name}.pt", weights_only=True)
        after = torch.load(final / f"{name}.pt", weights_only=True)
        assert all(torch.equal(before[k], after[k]) for k in before), name
    from safetensors.torch import load_file
    enc_before, enc_after = load_file(Path(tiny_dir) / "model.safetensors"), load_file(final / "model.safetensors")
    assert any(not torch.equal(enc_before[k], enc_after[k]) for k in enc_before)  # the encoder did learn


def test_gradient_checkpointing_choices(toy_data, tmp_path):
    for ok in (False, True, "layer"):
        _cfg(toy_data, None, tmp_path, gradient_checkpointing=ok).check()
    _cfg(toy_data, None, tmp_path, gradient_checkpointing="sub_batch", sub_batch_size=4).check()
    with pytest.raises(M3Error, match="sub_batch needs a sub_batch_size"):
        _cfg(toy_data, None, tmp_path, gradient_checkpointing="sub_batch").check()
    with pytest.raises(M3Error, match="choose one of true, false, layer, sub_batch"):
        _cfg(toy_data, None, tmp_path, gradient_checkpointing="all").check()


def test_logged_gradient_norm_covers_the_encoder_in_the_dense_stage(toy_data, tiny_dir, tmp_path):
    # the dense-only stage gives no gradient to the heads: its logged norm is the encoder's. (A
    # norm over the heads' parameters alone was 0 there; rank averaging: tests/test_distributed.py)
    train(_cfg(toy_data, tiny_dir, tmp_path, dense_steps=1, max_steps=2, save_every=0, head_lr_scale=0.5))
    assert all(r["grad_norm"] > 0 for r in _log(tmp_path))


def test_the_trainer_computes_its_loss_through_training_loss(toy_data, tiny_dir, tmp_path, monkeypatch):
    """One path: the trainer's step is `M3Model.training_loss` with its split-batch settings, and
    that equals the plain call (one pass, no checkpointing) on the same batch."""
    from m3ref import M3Model
    calls, real = [], M3Model.training_loss

    def record(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        calls.append((args, kwargs, out["L_final"].item()))
        return out

    monkeypatch.setattr(M3Model, "training_loss", record)
    train(_cfg(toy_data, tiny_dir, tmp_path, dense_steps=0, max_steps=1, save_every=0, sub_batch_size=2,
               gradient_checkpointing="sub_batch"))
    (queries, passages, config, step, teacher, q_len, p_len, sub_batch), kwargs, logged = calls[0]
    assert sub_batch == 2 and kwargs == {"checkpoint_sub_batches": True}
    assert _log(tmp_path)[0]["L_final"] == pytest.approx(logged, rel=1e-12)
    fresh = M3Model.from_pretrained(tiny_dir, device="cpu").train()
    plain = real(fresh, queries, passages, config, step, teacher, q_len, p_len)
    assert plain["L_final"].item() == pytest.approx(logged, rel=1e-6)


@pytest.mark.slow
def test_retromae_stage_then_dense_then_unified_and_exact_resume(toy_data, tiny_dir, tmp_path):
    """The whole recipe in one run: RetroMAE (stage 0), dense-only, unified; a resume inside
    stage 0 restores the decoder and draws the same masks."""
    a, b = tmp_path / "a", tmp_path / "b"
    cfg = dict(retromae_steps=2, retromae_batch_size=4, dense_steps=1, max_steps=4, save_every=1)
    train(_cfg(toy_data, tiny_dir, a, **cfg))
    log = _log(a)
    assert [r["stage"] for r in log] == ["retromae", "retromae", "dense", "unified"]
    assert all(math.isfinite(r["L_enc"]) and math.isfinite(r["L_dec"]) for r in log[:2])
    assert all(r["L_final"] == pytest.approx(r["L_enc"] + r["L_dec"]) for r in log[:2])
    assert log[2]["L_enc"] is None and math.isfinite(log[2]["L_dense"]) and math.isfinite(log[3]["L_mul"])
    assert (a / "checkpoint-1" / "retromae_decoder.pt").is_file() and not (a / "final" / "retromae_decoder.pt").exists()
    shutil.copytree(a / "checkpoint-1", b / "checkpoint-1")
    train(_cfg(toy_data, tiny_dir, b, **{**cfg, "save_every": 0}), resume="latest")
    for before, after in zip(log[1:], _log(b)):
        for k in ("L_final", "L_enc", "L_dec", "L_dense", "grad_norm"):
            want = None if before[k] is None else pytest.approx(before[k], rel=1e-6, abs=1e-9)
            assert after[k] == want, (after["step"], k)
