"""Build m3-mini: a small M3 trained with the paper's whole recipe on the Debian corpus.

    python data_samples/build_corpus.py --out CORPUS                  # once, minutes
    python data_samples/build_m3_mini.py --corpus CORPUS              # about an hour on 2 CPU cores
    python data_samples/build_m3_mini.py --corpus CORPUS --gpu        # the same recipe, bigger, on a GPU

The recipe of the paper (Sec. 3.4, Table 6; App. B.1), at the scale of a laptop:
1. a SentencePiece-style Unigram tokenizer trained on the corpus' training texts, every
   language capped so that Danish and Italian do not crowd out Korean or Chinese: the shipped
   one (data_samples/m3-mini/tokenizer.json), or with `--train-tokenizer` a new one (the trainer
   is not deterministic from one process to the next, so a new one means a new model);
2. an XLM-R-shaped encoder from random weights (`configs/m3-mini/model.yaml`);
3. the dense-only stage on the unsupervised pairs (`dense.yaml`), in two runs chosen on the dev
   split (configs/tuning/dense_stage.yaml): summary -> description pairs of every language first
   (`dense_mono`), then every pair, translation pairs included (`dense`). The paper's RetroMAE
   stage (`retromae.yaml`) is left out: from random weights at this budget it made the dense
   stage worse; the multi-stage ablation still runs it;
4. unified fine-tuning with 7 BM25 hard negatives, self-knowledge distillation and the long
   manual pages (`unified.yaml`).
Each stage is one `m3ref.train` run that starts from the previous one's final checkpoint, with
the data paths of its YAML file taken relative to CORPUS: the experiments `dense_mono`, `dense`
and `m3` (seed 0) of benchmarks/experiments/run_experiments.py, which trains them in the same
place (`--runs-dir`) and reuses them. The last checkpoint is written to `--out` (default
data_samples/m3-mini) in the official BGE-M3 layout, weights in float16 (the loaders read them
as float32), with `recipe.json`: the command, the configs, the corpus manifest's checksums, the
training-code fingerprint, the CPU time of each stage. The evaluation table of the model card
comes from the experiments.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
from m3ref.errors import M3Error, cli_errors  # noqa: E402

CONFIGS = ROOT / "configs" / "m3-mini"
RECIPE = ("dense_mono", "dense", "m3")  # the experiments of configs/experiments/ that make m3-mini, seed 0
SHIPPED_TOKENIZER = HERE / "m3-mini" / "tokenizer.json"  # trained on the corpus by this script (step 1)


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


def build_init(out: Path, corpus: Path, model_cfg: dict, seed: int, tokenizer: str | None = None) -> None:
    """The untrained encoder with fresh heads and its tokenizer: `tokenizer` (the text of a
    tokenizer.json; the runner passes the shipped one, SHIPPED_TOKENIZER), or, when None, a new one
    trained on the corpus. The `tokenizers` trainer gives another tokenizer in each process, hence
    another model: only the shipped tokenizer rebuilds the untrained model of the stored results."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast, XLMRobertaConfig, XLMRobertaModel

    import torch
    from m3ref.model import M3Model
    from m3ref.tiny import train_tokenizer

    texts = corpus_texts(corpus, model_cfg["tokenizer_texts_per_language"], seed)
    tok = Tokenizer.from_str(tokenizer if tokenizer is not None else train_tokenizer(texts, model_cfg["vocab_size"]))
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
    if (out / "README.md").is_file():  # the model card is written by hand: keep it
        shutil.copy2(out / "README.md", tmp / "README.md")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    del torch


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", required=True, help="the output directory of data_samples/build_corpus.py")
    ap.add_argument("--out", default=str(HERE / "m3-mini"), help="where the trained model goes")
    ap.add_argument("--runs-dir", default=str(ROOT / "runs" / "experiments"),
                    help="checkpoints of every stage (shared with benchmarks/experiments/run_experiments.py)")
    ap.add_argument("--gpu", action="store_true", help="the recipe's GPU sizes (configs/m3-mini/gpu.yaml)")
    ap.add_argument("--train-tokenizer", action="store_true",
                    help="train a new tokenizer on the corpus (another untrained model: every stage retrains) "
                         "instead of the shipped one")
    args = ap.parse_args(argv)
    with cli_errors():
        sys.path.insert(0, str(ROOT / "benchmarks" / "experiments"))
        import run_experiments as R
        corpus, runs = Path(args.corpus).resolve(), Path(args.runs_dir).resolve()
        if not (corpus / "manifest.json").is_file():
            raise M3Error(f"{corpus}: no manifest.json; build the corpus first (data_samples/build_corpus.py)")
        exps = R.experiments()
        R.init_model(runs, corpus, shipped_tokenizer=not args.train_tokenizer)
        records = {name: R.train(runs, corpus, name, exps[name], 0, args.gpu) for name in RECIPE}
        manifest = json.loads((corpus / "manifest.json").read_text())
        record = {"command": "python data_samples/build_m3_mini.py --corpus CORPUS" + (" --gpu" if args.gpu else ""),
                  "model": R.load_yaml(CONFIGS / "model.yaml"),
                  "stages": {name: {"experiment": exps[name], "train_config": rec["train_config"],
                                    "steps": rec["steps"], "cpu_s": rec["train_cpu_s"], "wall_s": rec["train_wall_s"]}
                             for name, rec in records.items()},
                  "corpus": {"archive": manifest["archive"], "inputs_sha256": manifest["inputs_sha256"]},
                  "training_code": records["m3"]["training_code"]}
        export(R.run_dir(runs, "m3", 0) / "final", Path(args.out), record)
        print(f"saved {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
