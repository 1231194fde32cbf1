"""The experiment runner's scheduler and reuse keys (benchmarks/experiments/run_experiments.py),
shared with the dense-stage sweep: a stage waits for the one it starts from, no more than `n_jobs`
subprocesses run at once, a failed start fails its children, and a finished run is recognised by
what it computed, not by the folder it lies in."""
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "experiments"))
import run_experiments as R  # noqa: E402

STARTS = {"a": None, "b": "a", "c": "b", "d": None, "e": None}  # job: the job it starts from


def recorder():
    state = {"running": 0, "peak": 0, "order": []}
    lock = threading.Lock()

    def work(tag, fail=()):
        def run(job):
            with lock:
                state["running"] += 1
                state["peak"] = max(state["peak"], state["running"])
                state["order"].append((tag, job))
            time.sleep(0.02)
            with lock:
                state["running"] -= 1
            if job in fail:
                raise ValueError(f"{tag} {job} failed")
            return f"{tag}-{job}"
        return run
    return state, work


def test_run_jobs_waits_for_starts_and_bounds_the_work():
    state, work = recorder()
    records, evals, extra = R.run_jobs(list(STARTS), STARTS.get, work("train"), work("eval"), 2, "test",
                                       extra=lambda: work("extra")("untrained"))
    assert records == {j: f"train-{j}" for j in STARTS} and evals == {j: f"eval-{j}" for j in STARTS}
    assert extra == "extra-untrained"
    assert state["peak"] == 2  # two at once, never three
    at = {step: i for i, step in enumerate(state["order"])}
    for job, start in STARTS.items():
        assert at["eval", job] > at["train", job]
        if start:
            assert at["train", job] > at["train", start]


def test_a_failed_start_fails_its_children_not_the_others():
    state, work = recorder()
    with pytest.raises(ValueError, match="train b failed"):
        R.run_jobs(list(STARTS), STARTS.get, work("train", fail={"b"}), work("eval"), 2, "test")
    trained = {job for tag, job in state["order"] if tag == "train"}
    assert "c" not in trained and {"a", "d", "e"} <= trained


def test_chain_depths_count_the_longest_chain_below():
    assert R.chain_depths(list(STARTS), STARTS.get) == {"a": 3, "b": 2, "c": 1, "d": 1, "e": 1}


def test_one_slot_goes_to_the_untrained_model_then_the_deepest_chain_then_evaluations():
    """With one slot the order is exact, whatever order the jobs are listed in: the untrained
    evaluation, then a -> b (the deepest chains; b takes a's slot), then the trainings of depth 1 in
    list order, then the evaluations in list order."""
    state, work = recorder()
    R.run_jobs(["d", "e", "a", "b", "c"], STARTS.get, work("train"), work("eval"), 1, "test",
               extra=lambda: work("extra")("untrained"))
    assert state["order"] == [("extra", "untrained"), ("train", "a"), ("train", "b"), ("train", "d"),
                              ("train", "e"), ("train", "c"), ("eval", "d"), ("eval", "e"), ("eval", "a"),
                              ("eval", "b"), ("eval", "c")]


def test_cancelled_slots_release_every_waiter():
    """An interrupted run: the threads waiting for a slot end instead of waiting forever."""
    slots, ended = R.Slots(1), []
    slots.open()

    def wait():
        try:
            with slots.hold((1,)):
                ended.append("ran")
        except SystemExit:
            ended.append("cancelled")
    with slots.hold((0,)):
        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(0.05)
        slots.cancel()
        waiter.join(timeout=5)
    assert not waiter.is_alive() and ended == ["cancelled"]


def test_a_run_folder_is_resumed_only_by_the_training_that_started_it(tmp_path):
    out, key = tmp_path / "m3-s0", {"train_key": {"max_steps": 7}, "training_code": "abc"}
    R.claim_run_dir(out, key)
    (out / "checkpoint-5").mkdir()  # interrupted: the same training resumes it
    R.claim_run_dir(out, key)
    assert (out / "checkpoint-5").is_dir()
    for other in ({**key, "training_code": "def"}, {**key, "train_key": {"max_steps": 8}}):
        (out / "final").mkdir(exist_ok=True)  # finished or not, another training starts afresh
        R.claim_run_dir(out, other)
        assert not (out / "checkpoint-5").exists() and not (out / "final").exists()
        assert json.loads((out / "started.json").read_text()) == other
        (out / "checkpoint-5").mkdir()
    (out / "started.json").unlink()  # a folder that does not say which training made it
    R.claim_run_dir(out, key)
    assert not (out / "checkpoint-5").exists()


def test_the_speed_probe_waits_for_something_left_to_train(tmp_path, monkeypatch):
    steps = {"a": 7}
    monkeypatch.setattr(R, "train_values", lambda runs, corpus, name, cfg, seed, gpu: {
        "model": str(ROOT / "data_samples" / "m3-mini"), "output_dir": str(R.run_dir(runs, name, seed)),
        "max_steps": steps[name]})
    left = lambda: R.left_to_train(tmp_path, None, {"a": {}}, [("a", 0)], False)  # noqa: E731
    assert left()  # never trained
    out = R.run_dir(tmp_path, "a", 0)
    (out / "final").mkdir(parents=True)
    (out / "final" / "config.json").write_text("{}")
    key = R.train_key(R.stored_config(R.train_values(tmp_path, None, "a", {}, 0, False)))
    for code, expected in (("another", True), (R.FP.training_digest(), False)):
        (out / "experiment_record.json").write_text(json.dumps({"train_key": key, "training_code": code}))
        assert left() == expected
    steps["a"] = 8  # a config edit retrains
    assert left()


@pytest.mark.slow  # builds the untrained model three times (~10 s)
def test_the_untrained_model_is_the_same_in_every_process(tmp_path):
    # the shipped tokenizer, not one retrained (the tokenizers trainer differs from process to process)
    unsup = tmp_path / "corpus" / "train" / "unsup"
    unsup.mkdir(parents=True)
    rows = [{"query": f"tool number {i}", "pos": [f"a tool that prints the number {i} and exits"]} for i in range(40)]
    (unsup / "desc-en_len-0-500.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    here = R.init_model(tmp_path / "a", tmp_path / "corpus")
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks' / 'experiments')!r}); import run_experiments as R; "
            f"from pathlib import Path; print(R.model_key(R.init_model(Path({str(tmp_path / 'b')!r}), "
            f"Path({str(tmp_path / 'corpus')!r}))))")
    there = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()[-1]
    assert R.model_key(here) == there
    shipped = (ROOT / "data_samples" / "m3-mini" / "tokenizer.json").read_bytes()
    assert (here / "tokenizer.json").read_bytes() == shipped
    R.init_model(tmp_path / "a", tmp_path / "corpus", shipped_tokenizer=False)  # a new one, trained on these texts
    assert (here / "tokenizer.json").read_bytes() != shipped
    assert R.model_key(R.init_model(tmp_path / "a", tmp_path / "corpus")) == there  # back to the shipped one


def test_model_key_names_contents_not_the_folder(tmp_path):
    src = ROOT / "data_samples" / "m3-mini"
    copy = tmp_path / "elsewhere"
    shutil.copytree(src, copy)
    assert R.model_key(copy) == R.model_key(src)
    (copy / "trainer_state.json").write_text(json.dumps({"step": 3, "config": {"output_dir": str(tmp_path)}}))
    assert R.model_key(copy) == R.model_key(src)  # a trained run's final/ names its folder there: not the model
    (copy / "sparse_linear.pt").write_bytes((copy / "sparse_linear.pt").read_bytes() + b"\0")
    assert R.model_key(copy) != R.model_key(src)


def test_train_key_ignores_the_output_folder(tmp_path):
    src = ROOT / "data_samples" / "m3-mini"
    shutil.copytree(src, tmp_path / "start")
    values = {"model": str(src), "output_dir": str(tmp_path / "run-a"), "max_steps": 7}
    moved = {**values, "model": str(tmp_path / "start"), "output_dir": str(tmp_path / "run-b")}
    key = lambda v: R.train_key(R.stored_config(v))  # noqa: E731
    assert key(values) == key(moved)
    assert key(values) != key({**values, "max_steps": 8})


def test_evaluate_once_reuses_only_a_result_of_the_same_key(tmp_path):
    out, calls = tmp_path / "eval.json", tmp_path / "calls"
    # the worker appends to `calls` and writes a result: how many times it ran is the count of lines
    worker = (f"import json, pathlib; open({str(calls)!r}, 'a').write('x\\n'); "
              f"pathlib.Path({str(out)!r}).write_text(json.dumps({{'score': 1}}))")
    cmd = [sys.executable, "-c", worker]
    first = R.evaluate_once(out, {"model": "m", "worker": "w1"}, cmd)
    again = R.evaluate_once(out, {"model": "m", "worker": "w1"}, cmd)
    assert first["score"] == again["score"] == 1 and calls.read_text().count("x") == 1
    R.evaluate_once(out, {"model": "m", "worker": "w2"}, cmd)  # an edited worker: evaluated again
    assert calls.read_text().count("x") == 2
    assert json.loads(out.read_text())["key"] == {"model": "m", "worker": "w2"}


def test_worker_digest_follows_the_function_not_its_neighbours(tmp_path):
    f = tmp_path / "w.py"
    f.write_text("def a():\n    return 1\n\n\ndef worker():\n    return 2\n")
    before = R.worker_digest(f, "worker")
    f.write_text("def a():\n    x = 3\n    return x\n\n\ndef worker():\n    return 2\n")
    assert R.worker_digest(f, "worker") == before
    f.write_text("def a():\n    return 1\n\n\ndef worker():\n    return 3\n")
    assert R.worker_digest(f, "worker") != before


def test_the_gpu_recipe_is_a_valid_config_of_every_experiment(tmp_path):
    """No GPU has run `--gpu` yet (book ch. 12), so at least its sizes must make a TrainConfig that
    passes every check, for every experiment, with each stage trained over the whole run; and the
    dense stage keeps the CPU recipe's split, monolingual first, 3 : 2."""
    from m3ref.config import load_config
    corpus = tmp_path / "corpus"
    for name, cfg in R.experiments().items():
        cpu, gpu = R.recipe_values(name, cfg), R.recipe_values(name, cfg, gpu=True)
        for key in R.DATA_KEYS:  # the corpus' files as any existing path (check() asks that they exist)
            if gpu.get(key):
                gpu[key] = str(corpus)
        corpus.mkdir(exist_ok=True)
        config = load_config(None, **{**gpu, "model": None, "output_dir": str(tmp_path / name)})
        assert config.max_steps > cpu["max_steps"], name  # GPU sizes are larger, never smaller
        for stage in ("dense_steps", "retromae_steps"):
            assert bool(getattr(config, stage)) == bool(cpu.get(stage)), (name, stage)
            assert getattr(config, stage) in (0, config.max_steps), (name, stage)  # one stage a run
    exps = R.experiments()
    cpu_split = [R.recipe_values(n, exps[n])["dense_steps"] for n in ("dense_mono", "dense")]
    gpu_split = [R.recipe_values(n, exps[n], gpu=True)["dense_steps"] for n in ("dense_mono", "dense")]
    assert cpu_split[0] * gpu_split[1] == cpu_split[1] * gpu_split[0]
