"""The training CLI as users of the official recipe write it (issue #16): every TrainConfig and
M3Config field is a flag, the official FlagEmbedding names are aliases, the official options
(fix_encoder, colbert_dim, pooling, num_train_epochs, instructions, no_in_batch_neg, types)
work; hub ids and mistyped paths; shipped configs by name; final/ and save_total_limit."""
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from m3ref import M3Config, M3Model, TrainConfig
from m3ref.errors import M3Error, M3Warning

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def _parse(argv):
    from m3ref.train import build_parser, config_from_args
    return config_from_args(build_parser().parse_args(argv))


# ------------------------------------------------------------------ flags generated from the dataclasses
def test_every_field_is_a_flag_nested_and_flat():
    from m3ref.train import build_parser
    options = {s for a in build_parser()._actions for s in a.option_strings}
    for f in dataclasses.fields(TrainConfig):
        if f.name != "m3":
            assert f"--{f.name}" in options and f"--{f.name.replace('_', '-')}" in options, f.name
    for f in dataclasses.fields(M3Config):
        assert f"--m3.{f.name}" in options and f"--{f.name}" in options, f.name


def test_flags_override_the_file_and_merge_into_its_m3_block(tmp_path):
    cfg = _parse(["--config", "tiny", "--max-steps", "7", "--m3.temperature", "0.05", "--pooling", "mean",
                  "--batch_size", "{0: 3, 500: 2}", "--m3.ensemble_weights", "[1, 0.5, 1]", "--drop_last",
                  "--train_data", "a.jsonl", "b.jsonl", "--model", "null", "--lr", "2e-5"])
    assert cfg.max_steps == 7 and cfg.batch_size == {0: 3, 500: 2} and cfg.drop_last is True and cfg.lr == 2e-5
    assert cfg.m3.temperature == 0.05 and cfg.m3.pooling == "mean" and cfg.m3.ensemble_weights == (1, 0.5, 1)
    assert cfg.m3.kd_loss_type == "m3_kd_loss" and cfg.m3.self_distill  # the rest of tiny.yaml's m3: block
    assert cfg.train_data == ["a.jsonl", "b.jsonl"] and cfg.model is None


def test_official_names_are_aliases():
    cfg = _parse(["--model_name_or_path", "BAAI/bge-m3", "--train_group_size", "4", "--learning_rate", "1e-5",
                  "--per_device_train_batch_size", "2", "--knowledge_distillation", "True", "--save_steps", "50",
                  "--temperature", "0.02", "--unified_finetuning", "True", "--use_self_distill", "True",
                  "--self_distill_start_step", "0", "--kd_loss_type", "kl_div", "--negatives_cross_device",
                  "--fp16", "--gradient_checkpointing", "--num_train_epochs", "2", "--warmup_ratio", "0.1",
                  "--fix_encoder", "False", "--colbert_dim", "64", "--sentence_pooling_method", "last_token",
                  "--normalize_embeddings", "False", "--query_instruction_for_retrieval", "Represent this: ",
                  "--output_dir", "out", "--dataloader_drop_last", "True", "--gradient_accumulation_steps", "2",
                  "--report_to", "tensorboard", "--logging_steps", "1", "--deepspeed", "ds.json",
                  "--same_dataset_within_batch", "True", "--overwrite_output_dir", "--weight_decay", "0.01",
                  "--seed", "3", "--sub_batch_size", "8", "--query_max_len", "64", "--passage_max_len", "128",
                  "--save_total_limit", "2", "--max_grad_norm", "1.0"])
    assert (cfg.model, cfg.group_size, cfg.lr, cfg.batch_size, cfg.teacher_kd, cfg.save_every) == \
        ("BAAI/bge-m3", 4, 1e-5, 2, True, 50)
    assert (cfg.precision, cfg.gradient_checkpointing, cfg.num_train_epochs, cfg.drop_last, cfg.grad_accum) == \
        ("fp16", True, 2, True, 2)
    assert cfg.tensorboard and cfg.fix_encoder is False and cfg.seed == 3 and cfg.sub_batch_size == 8
    assert cfg.query_instruction_for_retrieval == "Represent this: " and cfg.save_total_limit == 2
    m3 = cfg.m3
    assert (m3.temperature, m3.unified, m3.self_distill, m3.self_distill_start_step, m3.kd_loss_type) == \
        (0.02, True, True, 0, "kl_div")
    assert (m3.cross_device, m3.colbert_dim, m3.pooling, m3.normalize_embeddings) == ("dense", 64, "last_token", False)
    assert _parse(["--negatives_cross_device", "false"]).m3.cross_device == "none"
    assert _parse(["--bf16"]).precision == "bf16"


def test_length_flags_command_line_wins_and_max_steps_beats_epochs():
    assert _parse(["--config", "tiny", "--num_train_epochs", "1"]).num_train_epochs == 1  # tiny.yaml has max_steps
    with pytest.warns(M3Warning, match="max_steps=5 and num_train_epochs=1 are both set: max_steps wins"):
        cfg = _parse(["--max_steps", "5", "--num_train_epochs", "1"])
    assert cfg.max_steps == 5 and cfg.num_train_epochs is None


def test_unsupported_official_values_warn_and_bad_values_are_one_line(capsys):
    with pytest.warns(M3Warning, match="--shuffle_ratio 0.002: not supported"):
        _parse(["--shuffle_ratio", "0.002"])
    from m3ref.train import main
    for argv, message in ((["--max_steps", "x"], "max_steps='x': must be an integer"),
                          (["--pooling", "max"], "pooling must be one of cls, mean, last_token"),
                          (["--config", "no-such-config"], "no config file at no-such-config (shipped configs, by "
                                                           "name: bge-m3-gpu, bge-m3-paper-gpu"),
                          (["--query_instruction_format", "{}"], "query_instruction_format")):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2 and len(err.splitlines()) == 1 and message in err, err


def test_shipped_configs_by_name_from_any_directory(tmp_path, monkeypatch):
    from m3ref.config import load_config
    monkeypatch.chdir(tmp_path)
    for name in ("tiny", "tiny.yaml", "configs/tiny.yaml"):
        cfg = load_config(name)
        assert Path(cfg.train_data).is_dir() and Path(cfg.dense_train_data).is_dir()  # the shipped samples
    for name in ("bge-m3-gpu", "bge-m3-paper-gpu"):
        assert load_config(name, train_data="x").model.startswith("BAAI/")
    (tmp_path / "data_samples" / "train" / "unsup").mkdir(parents=True)  # a local folder of that name wins
    assert load_config("tiny").dense_train_data == "data_samples/train/unsup"


# ------------------------------------------------------------------ hub ids and local paths
def test_hub_ids_with_and_without_owner_and_local_paths(tmp_path, monkeypatch):
    from m3ref.data import is_hub_id
    monkeypatch.chdir(ROOT)
    for name in ("BAAI/bge-m3", "xlm-roberta-large", "FacebookAI/xlm-roberta-large", "BAAI/bge-m3-unsupervised"):
        assert is_hub_id(name), name
    for name in ("./typo", "../x", "/abs/path", "~/model", "tests/typo", "runs/tiny/final", "a/b/c", "", "x y"):
        assert not is_hub_id(name), name


@pytest.mark.parametrize("name,message", [
    ("./typo", "no checkpoint directory at ./typo"),
    ("tests/typo", "no checkpoint directory at tests/typo"),  # tests/ exists: a local path
    ("runs/tiny/finall", "no checkpoint directory at runs/tiny/finall"),
    ("xlm-roberta-large", "cannot fetch 'xlm-roberta-large' from the hub"),  # no owner: tried on the hub
    ("BAAI/bge-m3-unsupervised", "cannot fetch 'BAAI/bge-m3-unsupervised' from the hub"),
])
def test_model_names_are_one_line_errors(name, message, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the hub is out of reach here: the attempt is what is tested
    with pytest.raises(M3Error) as exc:
        M3Model.from_pretrained(name)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_a_mistyped_model_path_stops_the_cli_before_training(tmp_path, monkeypatch, capsys):
    from m3ref.train import main
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exc:
        main(["--config", "tiny", "--model", "tests/no-such-model", "--output_dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and err == "error: no checkpoint directory at tests/no-such-model"


# ------------------------------------------------------------------ the official data options, unit by unit
def test_instructions_prompts_and_symmetric_passages():
    from m3ref.train import instructed
    cfg = TrainConfig(query_instruction_for_retrieval="Q: ", passage_instruction_for_retrieval="P: ")
    q, p = instructed(["a", "b"], [["pa", "na"], ["pb", "nb"]], [None, "Own: "], None, cfg)
    assert q == ["Q: a", "Own: b"] and p == [["P: pa", "P: na"], ["P: pb", "P: nb"]]
    q, p = instructed(["a"], [["pa", "na"]], ["Same: "], "symmetric_sts", cfg)
    assert q == ["Same: a"] and p == [["Same: pa", "Same: na"]]
    plain = TrainConfig()
    assert instructed(["a"], [["pa"]], [None], "symmetric_clustering", plain) == (["a"], [["pa"]])
    fmt = TrainConfig(query_instruction_for_retrieval="find", query_instruction_format="<{}> {}")
    assert instructed(["a"], [["pa"]], [None], None, fmt)[0] == ["<find> a"]


def test_types_set_group_and_batch_sizes(tmp_path):
    from m3ref.batching import Batch
    from m3ref.data import load_train_data
    from m3ref.train import _batch_sizes, batches_per_epoch, data_meta, group_size_for
    rows = [{"query": "q", "pos": ["p"], "neg": ["n1", "n2"], "type": "symmetric_class"}] * 3
    (tmp_path / "cls-no_in_batch_neg").mkdir()
    f = tmp_path / "cls-no_in_batch_neg" / "banking.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = load_train_data(f)["banking"]
    meta = data_meta(tmp_path / "cls-no_in_batch_neg", "banking", ds)
    assert meta == {"local": True, "type": "symmetric_class"}
    assert data_meta(f, "banking", ds)["local"] is False  # the file's own name does not end in it
    batch = Batch(0, 0, [0, 1])
    assert group_size_for(meta, ds, batch, 8) == 3 and group_size_for(meta, ds, batch, 2) == 2
    assert group_size_for({"type": "only_1neg"}, ds, batch, 8) == 2 and group_size_for({"type": None}, ds, batch, 8) == 8
    cfg = TrainConfig(batch_size={0: 8, 500: 3})
    assert _batch_sizes("unified", [0, 500, 0], [meta, meta, {"type": None}], cfg) == [4, 1, 8]
    assert batches_per_epoch([10, 3], [2, 4], 1, False) == 5 + 1 and batches_per_epoch([10, 3], [2, 4], 1, True) == 5
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(json.dumps(rows[0]) + "\n" + json.dumps(dict(rows[0], type="only_1neg")) + "\n")
    with pytest.raises(M3Error, match="mixed: examples of 2 types"):
        data_meta(mixed, "mixed", load_train_data(mixed)["mixed"])


def test_no_in_batch_neg_loss_is_the_mean_of_one_query_batches(tiny_model):
    """Local-group loss only: every term equals the mean over queries of the one-query batch
    (where in-batch and local negatives coincide), self-distillation and teacher KD included."""
    queries = ["a cat on a mat", "Wie spät ist es?", "the speed of light"]
    groups = [["cats sit on mats", "dogs bark", "rain falls"], ["Es ist acht Uhr.", "Hallo", "Tschüss"],
              ["light is fast", "sound is slow", "water is wet"]]
    teacher = [[1.0, 0.2, 0.1], [0.5, 0.4, 0.0], [2.0, 0.0, 0.3]]
    for scores in (None, teacher):
        for kd in ("m3_kd_loss", "kl_div"):
            config = M3Config(kd_loss_type=kd)
            with torch.no_grad():
                local = tiny_model.training_loss(queries, groups, config, teacher_scores=scores,
                                                 in_batch_negatives=False)
                ones = [tiny_model.training_loss([q], [g], config, teacher_scores=None if scores is None else [s])
                        for q, g, s in zip(queries, groups, scores or [None] * 3)]
                batch = tiny_model.training_loss(queries, groups, config, teacher_scores=scores)
            for key in ("L_dense", "L_lex", "L_mul", "L_inter", "L_prime", "L_final"):
                want = torch.stack([o[key] for o in ones]).mean()
                torch.testing.assert_close(local[key], want, rtol=1e-5, atol=1e-6)
            assert local["s_inter"].shape == (3, 3) and batch["s_inter"].shape == (3, 9)
            assert not torch.isclose(local["L_final"], batch["L_final"])  # in-batch negatives change it


# ------------------------------------------------------------------ checkpoints: final/, save_total_limit
def test_save_total_limit_keeps_the_newest_and_never_the_one_just_written(tmp_path):
    from m3ref.distributed import DistEnv
    from m3ref.train import rotate_checkpoints
    env = DistEnv(rank=0, world_size=1, local_rank=0, device="cpu")
    for step in (2, 4, 6, 10):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "final").mkdir()
    removed = rotate_checkpoints(tmp_path / "checkpoint-6", 2, env)  # checkpoint-10: left by a longer run
    assert sorted(p.name for p in removed) == ["checkpoint-2", "checkpoint-4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10", "checkpoint-6", "final"]
    assert rotate_checkpoints(tmp_path / "checkpoint-6", None, env) == []


@pytest.mark.slow
def test_final_holds_the_model_only_and_save_total_limit_rotates(tmp_path, tiny_dir, capsys):
    """final/: what inference, FlagEmbedding and sentence-transformers read, plus trainer_state.json;
    3 of 4 checkpoints rotated away; the kept one resumes; final/ resumes with a warning."""
    from m3ref.train import latest_checkpoint, main
    out = tmp_path / "run"
    argv = ["--config", "tiny", "--model", tiny_dir, "--output_dir", str(out), "--dense_steps", "0",
            "--max_steps", "5", "--save_every", "1", "--save_total_limit", "1"]
    main(argv)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["checkpoint-4", "final"]
    final = sorted(p.name for p in (out / "final").iterdir())
    assert final == ["1_Pooling", "2_Normalize", "colbert_linear.pt", "config.json", "config_sentence_transformers.json",
                     "model.safetensors", "modules.json", "sentence_bert_config.json", "sparse_linear.pt",
                     "tokenizer.json", "tokenizer_config.json", "trainer_state.json"]
    assert {"optimizer.pt", "rng_state_0.pt"} <= {p.name for p in (out / "checkpoint-4").iterdir()}
    assert latest_checkpoint(out) == out / "final"
    capsys.readouterr()
    main(argv + ["--max_steps", "6", "--resume"])
    assert re.search(r"warning: \S+/final holds the model only \(no optimizer state, no RNG state\): AdamW's "
                     r"moments start from zero at step 5", capsys.readouterr().err)
    assert json.loads((out / "final" / "trainer_state.json").read_text())["step"] == 6


# ------------------------------------------------------------------ the official options in a run
@pytest.mark.slow
def test_fix_encoder_trains_the_heads_only_and_colbert_dim_sets_their_width(tmp_path, tiny_dir):
    from safetensors.torch import load_file
    from m3ref.train import main
    out = tmp_path / "run"
    main(["--config", "tiny", "--model_name_or_path", tiny_dir, "--output_dir", str(out), "--dense_steps", "0",
          "--max_steps", "2", "--fix_encoder", "True", "--learning_rate", "1e-3", "--save_steps", "0"])
    before, after = load_file(Path(tiny_dir) / "model.safetensors"), load_file(out / "final" / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(torch.load(Path(tiny_dir) / "sparse_linear.pt", weights_only=True)["weight"],
                           torch.load(out / "final" / "sparse_linear.pt", weights_only=True)["weight"])
    # colbert_dim on a plain encoder (no heads: fresh ones of that width)
    plain = tmp_path / "plain"
    shutil.copytree(tiny_dir, plain)
    for name in ("colbert_linear.pt", "sparse_linear.pt"):
        (plain / name).unlink()
    main(["--config", "tiny", "--model", str(plain), "--output_dir", str(tmp_path / "c"), "--dense_steps", "0",
          "--max_steps", "1", "--colbert_dim", "32", "--save_every", "0"])
    model = M3Model.from_pretrained(tmp_path / "c" / "final", device="cpu")
    assert model.colbert_linear.weight.shape == (32, 128) and model.encode("a b c").colbert.shape[1] == 32


def _official_example_data(root: Path) -> list:
    """The four kinds of data of the official m3.sh example, small: retrieval (teacher scores),
    sts (prompt, symmetric_sts), classification-no_in_batch_neg (symmetric_class) and
    clustering-no_in_batch_neg (symmetric_clustering, prompt)."""
    src = [json.loads(line) for line in (ROOT / "data_samples/source/en.jsonl").read_text().splitlines()][:12]
    (root / "retrieval").mkdir(parents=True)
    (root / "sts").mkdir()
    (root / "classification-no_in_batch_neg").mkdir()
    (root / "clustering-no_in_batch_neg").mkdir()
    files = {
        "retrieval/msmarco.jsonl": [{"query": r["query"], "pos": [r["passage"]], "neg": [r["related"], src[i - 1]["passage"]],
                                     "pos_scores": [1.0], "neg_scores": [0.3, 0.1]} for i, r in enumerate(src[:4])],
        "sts/sts.jsonl": [{"query": r["title"], "pos": [r["passage"][:80]], "neg": [src[i - 1]["title"]],
                           "prompt": "Retrieve semantically similar text.", "type": "symmetric_sts"}
                          for i, r in enumerate(src[4:6])],
        "classification-no_in_batch_neg/topics.jsonl": [
            {"query": r["query"], "pos": ["science" if i % 2 else "history"], "neg": ["history" if i % 2 else "science"],
             "prompt": "Classify the topic.", "type": "symmetric_class"} for i, r in enumerate(src[6:8])],
        "clustering-no_in_batch_neg/titles.jsonl": [
            {"query": r["title"], "pos": [r["query"]], "neg": [src[i - 1]["query"], src[i - 2]["query"]],
             "prompt": "Identify the topic of the title.", "type": "symmetric_clustering"}
            for i, r in enumerate(src[8:10])],
    }
    for name, rows in files.items():
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return [str(root / "retrieval"), str(root / "sts" / "sts.jsonl"), str(root / "classification-no_in_batch_neg"),
            str(root / "clustering-no_in_batch_neg")]


@pytest.mark.slow
def test_the_official_example_command_runs_through_m3ref(tmp_path, tiny_dir, monkeypatch):
    """examples/finetune/embedder/encoder_only/m3.sh's arguments, as written there, scaled to the
    tiny model (group size, lengths, epochs): one epoch over the four kinds of data."""
    from m3ref.train import main
    import m3ref.model
    train_data = _official_example_data(tmp_path / "example_data")
    out = tmp_path / "test_encoder_only_m3"
    calls, real = [], M3Model.training_loss

    def record(self, queries, passages, *args, **kwargs):
        calls.append((list(queries), [list(g) for g in passages], kwargs.get("in_batch_negatives", True)))
        return real(self, queries, passages, *args, **kwargs)

    monkeypatch.setattr(m3ref.model.M3Model, "training_loss", record)
    argv = ["--model_name_or_path", tiny_dir, "--cache_dir", str(tmp_path / "cache"),
            "--train_data", *train_data, "--cache_path", str(tmp_path / "cache"),
            "--train_group_size", "3", "--query_max_len", "32", "--passage_max_len", "32", "--pad_to_multiple_of", "8",
            "--knowledge_distillation", "True", "--same_dataset_within_batch", "True", "--small_threshold", "0",
            "--drop_threshold", "0", "--output_dir", str(out), "--overwrite_output_dir", "--learning_rate", "1e-5",
            "--fp16", "--num_train_epochs", "1", "--per_device_train_batch_size", "2", "--dataloader_drop_last", "True",
            "--warmup_ratio", "0.1", "--gradient_checkpointing", "--deepspeed", "../../ds_stage0.json",
            "--logging_steps", "1", "--save_steps", "1000", "--negatives_cross_device", "--temperature", "0.02",
            "--sentence_pooling_method", "cls", "--normalize_embeddings", "True", "--kd_loss_type", "m3_kd_loss",
            "--unified_finetuning", "True", "--use_self_distill", "True", "--fix_encoder", "False",
            "--self_distill_start_step", "0"]
    main(argv)
    saved = json.loads((out / "train_config.json").read_text())
    assert (saved["group_size"], saved["lr"], saved["batch_size"], saved["precision"], saved["teacher_kd"]) == \
        (3, 1e-5, 2, "fp16", True)
    assert saved["m3"]["cross_device"] == "dense" and saved["m3"]["self_distill_start_step"] == 0
    # one epoch: retrieval 4 examples / 2, the symmetric files at half the batch size: 2 + 2 + 2
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 2 + 2 + 2 + 2 == len(calls)
    by_kind = {}
    for queries, passages, in_batch in calls:
        kind = ("sts" if queries[0].startswith("Retrieve semantically") else
                "class" if queries[0].startswith("Classify") else
                "cluster" if queries[0].startswith("Identify") else "retrieval")
        by_kind.setdefault(kind, []).append((len(queries), len(passages[0]), in_batch, passages))
    assert [b[:3] for b in by_kind["retrieval"]] == [(2, 3, True)] * 2
    assert [b[:3] for b in by_kind["sts"]] == [(1, 3, True)] * 2  # symmetric: half the batch
    assert all(p.startswith("Retrieve semantically similar text.") for b in by_kind["sts"] for p in b[3][0])
    assert [b[:3] for b in by_kind["class"]] == [(1, 2, False)] * 2  # G = negatives + 1; local loss
    assert [b[:3] for b in by_kind["cluster"]] == [(1, 3, False)] * 2
    assert all(p.startswith("Identify the topic") for b in by_kind["cluster"] for p in b[3][0])
    assert (out / "final" / "modules.json").is_file()


@pytest.mark.slow
def test_python_m_train_with_a_shipped_config_from_another_directory(tmp_path, tiny_dir):
    """`python -m m3ref.train --config configs/tiny.yaml` outside the repository (the package on
    the path, as after pip install): the shipped config and its sample data are found."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    shutil.copytree(tiny_dir, tmp_path / "out" / "init")  # model: null would build it; the same model
    proc = subprocess.run([sys.executable, "-m", "m3ref.train", "--config", "configs/tiny.yaml", "--max-steps", "2",
                           "--output-dir", "out"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "out" / "final" / "modules.json").is_file()
