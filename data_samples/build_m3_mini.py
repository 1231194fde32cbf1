"""Build m3-mini: a small M3 trained with the paper's whole recipe on the Debian corpus.

    python data_samples/build_corpus.py --out CORPUS                  # once, minutes
    python data_samples/build_m3_mini.py --corpus CORPUS              # about an hour on 2 CPU cores
    python data_samples/build_m3_mini.py --corpus CORPUS --gpu        # the same recipe, bigger, on a GPU

The recipe of the paper (Sec. 3.4, Table 6; App. B.1), at the scale of a laptop:
1. a SentencePiece-style Unigram tokenizer trained on the corpus' training texts, every
   language capped so that Danish and Italian do not crowd out Korean or Chinese;
2. an XLM-R-shaped encoder from random weights (`configs/m3-mini/model.yaml`);
3. RetroMAE pre-training on the training passages (`configs/m3-mini/retromae.yaml`);
4. the dense-only stage on the unsupervised pairs: summary -> description in every
   language, and translation pairs (`dense.yaml`);
5. unified fine-tuning with 7 BM25 hard negatives, self-knowledge distillation and the long
   manual pages (`unified.yaml`).
Each stage is one `m3ref.train` run that starts from the previous one's final checkpoint, with
the data paths of its YAML file taken relative to CORPUS. The last checkpoint is written to
`--out` (default data_samples/m3-mini) in the official BGE-M3 layout, weights in float16 (the
loaders read them as float32), with `recipe.json`: the command, the configs, the corpus
manifest's checksums, the m3ref source fingerprint, the CPU time of each stage.
The evaluation table of the model card comes from `benchmarks/experiments/run_experiments.py`.
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
from m3ref.errors import M3Error, cli_errors  # noqa: E402

CONFIGS = ROOT / "configs" / "m3-mini"
STAGES = ("retromae", "dense", "unified")
DATA_KEYS = ("train_data", "dense_train_data", "retromae_data")


def corpus_texts(corpus: Path, per_language: int, seed: int = 0) -> list:
    """Queries and passages of the unsupervised training files (summary -> description),
    at most `per_language` of each language, drawn with a fixed seed."""
    by_lang = {}
    for f in sorted((corpus / "train" / "unsup").glob("desc-*.jsonl")):
        lang = f.name.split("_len-")[0].removeprefix("desc-")
        with open(f, encoding="utf-8") as lines:
            for line in lines:
                row = json.loads(line)
                by_lang.setdefault(lang, []).extend([row["query"], *row["pos"]])
    texts = []
    for lang in sorted(by_lang):
        rows = by_lang[lang]
        random.Random(f"{seed}-{lang}").shuffle(rows)
        texts += rows[:per_language]
    return texts


def build_init(out: Path, corpus: Path, model_cfg: dict, seed: int) -> None:
    """The tokenizer trained on the corpus and the untrained encoder with fresh heads."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast, XLMRobertaConfig, XLMRobertaModel

    import torch
    from m3ref.model import M3Model
    from m3ref.tiny import train_tokenizer

    texts = corpus_texts(corpus, model_cfg["tokenizer_texts_per_language"], seed)
    tok = Tokenizer.from_str(train_tokenizer(texts, model_cfg["vocab_size"]))
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                 cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                                 model_max_length=model_cfg["max_position_embeddings"] - 2)
    width = model_cfg["hidden_size"]
    config = XLMRobertaConfig(
        vocab_size=len(hf), hidden_size=width, num_hidden_layers=model_cfg["num_hidden_layers"],
        num_attention_heads=model_cfg["num_attention_heads"], intermediate_size=4 * width,
        max_position_embeddings=model_cfg["max_position_embeddings"], type_vocab_size=1, pad_token_id=1,
        bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5, initializer_range=model_cfg["initializer_range"],
        hidden_dropout_prob=model_cfg["dropout"], attention_probs_dropout_prob=model_cfg["dropout"])
    torch.manual_seed(seed)
    M3Model(XLMRobertaModel(config, add_pooling_layer=False), hf).save_pretrained(out)
    (out / "tokenizer_texts.json").write_text(json.dumps({"texts": len(texts), "seed": seed}))


def stage_config(stage: str, corpus: Path, work: Path, model: str, seed: int, overrides: dict):
    """The TrainConfig of one stage: its YAML, data paths under `corpus`, output under `work`."""
    import yaml
    from m3ref.config import load_config

    values = yaml.safe_load((CONFIGS / f"{stage}.yaml").read_text())
    for key in DATA_KEYS:
        if values.get(key):
            paths = values[key] if isinstance(values[key], list) else [values[key]]
            found = [str(f) for p in paths for f in (sorted(corpus.glob(p)) if "*" in p else [corpus / p])]
            if not found:
                raise M3Error(f"{CONFIGS / stage}.yaml: {key}: no file matches {paths} in {corpus}")
            values[key] = found
    values.update(model=model, output_dir=str(work / stage), seed=seed, **(overrides or {}).get(stage, {}))
    return load_config(None, **values)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def export(final: Path, out: Path, record: dict) -> None:
    """Copy the last checkpoint into `out`: inference files only, weights in float16."""
    import torch
    from m3ref.model import M3Model

    model = M3Model.from_pretrained(final, device="cpu")
    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.half().save_pretrained(tmp)
    config = json.loads((tmp / "config.json").read_text())
    config["torch_dtype"] = config["dtype"] = "float32"  # stored in float16, computed in float32
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (tmp / "recipe.json").write_text(json.dumps(record, indent=1) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    del torch


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", required=True, help="the output directory of data_samples/build_corpus.py")
    ap.add_argument("--out", default=str(HERE / "m3-mini"), help="where the trained model goes")
    ap.add_argument("--work", default=str(ROOT / "runs" / "m3-mini"), help="checkpoints of every stage")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gpu", action="store_true", help="the recipe's GPU sizes (configs/m3-mini/gpu.yaml)")
    args = ap.parse_args(argv)
    with cli_errors():
        import yaml
        corpus, work, out = Path(args.corpus), Path(args.work), Path(args.out)
        if not (corpus / "manifest.json").is_file():
            raise M3Error(f"{corpus}: no manifest.json; build the corpus first (data_samples/build_corpus.py)")
        model_cfg = yaml.safe_load((CONFIGS / "model.yaml").read_text())
        overrides = yaml.safe_load((CONFIGS / "gpu.yaml").read_text()) if args.gpu else {}
        init = work / "init"
        times = {}
        if not (init / "config.json").is_file():
            t0 = cpu_seconds()
            build_init(init, corpus, model_cfg, args.seed)
            times["init"] = round(cpu_seconds() - t0, 1)
        from m3ref.train import train
        model = str(init)
        for stage in STAGES:
            cfg = stage_config(stage, corpus, work, model, args.seed, overrides)
            final = Path(cfg.output_dir) / "final"
            t0 = cpu_seconds()
            if not (final / "trainer_state.json").is_file():
                train(cfg, resume="auto")
            times[stage] = round(cpu_seconds() - t0, 1)
            model = str(final)
        manifest = json.loads((corpus / "manifest.json").read_text())
        record = {"command": "python data_samples/build_m3_mini.py --corpus CORPUS" + (" --gpu" if args.gpu else ""),
                  "seed": args.seed, "model": model_cfg,
                  "stages": {s: yaml.safe_load((CONFIGS / f"{s}.yaml").read_text()) for s in STAGES},
                  "gpu_overrides": overrides or None, "cpu_seconds_this_run": times,
                  "corpus": {"archive": manifest["archive"], "inputs_sha256": manifest["inputs_sha256"]},
                  "source": _source_fingerprint()}
        export(Path(model), out, record)
        print(f"saved {out}", file=sys.stderr)


def _source_fingerprint() -> str:
    sys.path.insert(0, str(ROOT / "benchmarks" / "experiments"))
    import fingerprint
    return fingerprint.fingerprint()["source"]


if __name__ == "__main__":
    main()
