"""A tiny, offline stand-in for BGE-M3 (book ch. 00): same architecture family, built here.

* Tokenizer: a SentencePiece-style Unigram model trained with `tokenizers` on the texts of
  data_samples/source (ten languages), with XLM-R's special tokens: <s>=0, <pad>=1, </s>=2,
  <unk>=3, and <mask> last.
* Encoder: an `XLMRobertaModel` with 8194 positions (8192 tokens, as BGE-M3), but 2
  layers of width 128 instead of 24 of width 1024.
* Heads: `colbert_linear` and `sparse_linear`, as in the official checkpoint.

The model is saved in the official layout, so `M3Model.from_pretrained` and FlagEmbedding
both load it. The build is deterministic for a given seed and takes seconds.
`M3Model.from_pretrained("BAAI/bge-m3")` is the same code with the real weights.
"""
from __future__ import annotations

import functools
import glob
import hashlib
import json
import os
from typing import Optional

import torch

from .assets import asset_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE_DIR = str(asset_path("data_samples/source"))  # in the checkout, or inside the installed package
# The trained tokenizer ships with the samples. The `tokenizers` Unigram trainer gives different
# ids in every process (its Rust hash maps are randomly seeded), so a tokenizer trained afresh
# would change every stored output. `trained_on.json` records the texts it was trained on.
TOKENIZER_DIR = str(asset_path("data_samples/tokenizer"))
# m3-mini: the small M3 trained with the paper's recipe on the Debian corpus
# (data_samples/build_m3_mini.py; model card: data_samples/m3-mini/README.md).
MINI_DIR = str(asset_path("data_samples/m3-mini"))
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]


def sample_texts(source_dir: str = SOURCE_DIR) -> list:
    """Every title, query, passage and related text of the shipped samples, in a fixed order."""
    texts = []
    for path in sorted(glob.glob(os.path.join(source_dir, "*.jsonl"))):
        with open(path, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                texts += [row[k] for k in ("title", "query", "passage", "related") if row.get(k)]
    return texts


@functools.lru_cache(maxsize=4)
def _train_tokenizer(vocab_size: int, source_dir: str) -> str:
    """Train the Unigram model on the sample texts once per process; returns its JSON."""
    texts = sample_texts(source_dir)
    if not texts:
        raise FileNotFoundError(f"no sample texts in {source_dir}")
    return train_tokenizer(texts, vocab_size)


def train_tokenizer(texts, vocab_size: int) -> str:
    """A SentencePiece-style Unigram tokenizer with XLM-R's special ids, trained on `texts`;
    returns its JSON. (The `tokenizers` trainer is not deterministic across processes: ship
    the result rather than retrain it.)"""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    # NFKC, and any run of whitespace (newlines too) is one space, as XLM-R's SentencePiece does.
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(r"\s+"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, unk_token="<unk>",
                                      show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_special_tokens(["<mask>"])  # the last id, as in XLM-R
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return tok.to_str()


def texts_digest(source_dir: str = SOURCE_DIR, vocab_size: int = 8000) -> str:
    """sha256 of the sample texts (and vocabulary size) a tokenizer is trained on."""
    h = hashlib.sha256(str(vocab_size).encode())
    for path in sorted(glob.glob(os.path.join(source_dir, "*.jsonl"))):
        with open(path, "rb") as f:
            h.update(os.path.basename(path).encode() + f.read())
    return h.hexdigest()


def shipped_tokenizer_matches(source_dir: str = SOURCE_DIR, vocab_size: int = 8000) -> bool:
    """Was data_samples/tokenizer trained on exactly these texts?"""
    meta = os.path.join(TOKENIZER_DIR, "trained_on.json")
    if not os.path.isfile(meta):
        return False
    with open(meta, encoding="utf-8") as f:
        return json.load(f)["texts_sha256"] == texts_digest(source_dir, vocab_size)


def build_tokenizer(out_dir: Optional[str] = None, vocab_size: int = 8000, source_dir: str = SOURCE_DIR,
                    retrain: bool = False):
    """The tiny XLM-R-style tokenizer as a `transformers` fast tokenizer.

    The shipped one (data_samples/tokenizer) when it was trained on these texts; otherwise (or
    with `retrain=True`) a Unigram model trained now, whose ids differ from run to run.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    if not retrain and shipped_tokenizer_matches(source_dir, vocab_size):
        tok = Tokenizer.from_file(os.path.join(TOKENIZER_DIR, "tokenizer.json"))
    else:
        tok = Tokenizer.from_str(_train_tokenizer(vocab_size, os.path.abspath(source_dir)))
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                 cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                                 model_max_length=8192)
    if out_dir:
        hf.save_pretrained(out_dir)
    return hf


def build_tiny_model(out_dir: str, seed: int = 0, hidden_size: int = 128, num_layers: int = 2,
                     num_heads: int = 4, tokenizer=None, initializer_range: float = 0.2, dropout: float = 0.0):
    """Build, save (official layout) and return an untrained tiny M3 model.

    `dropout` is 0, not XLM-R's 0.1: from random weights, a 0.1 dropout makes two passes of one
    text as different as two different texts ([CLS] cosine 0.48 against 0.47), so the
    contrastive loss cannot tell a positive from a negative and stalls at ln(batch size); with
    0 the model memorises a batch within tens of steps (tests/test_model.py). BGE-M3 fine-tunes
    a pretrained encoder, whose representation is far above the dropout noise.
    `initializer_range` is 0.2, not XLM-R's 0.02, so that the untrained [CLS] state already
    depends on the text (mean pairwise cosine about 0.7 on the samples, 1.0 with 0.02), which
    makes the chapters' untrained examples readable; 0.02 trains as well.
    """
    from transformers import XLMRobertaConfig, XLMRobertaModel

    from .model import M3Model

    tokenizer = tokenizer or build_tokenizer()
    config = XLMRobertaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads, intermediate_size=4 * hidden_size,
        max_position_embeddings=8194, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        layer_norm_eps=1e-5, initializer_range=initializer_range, hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout)
    torch.manual_seed(seed)
    encoder = XLMRobertaModel(config, add_pooling_layer=False)
    model = M3Model(encoder, tokenizer)
    model.save_pretrained(out_dir)
    return model.eval()


def write_shipped_tokenizer(vocab_size: int = 8000) -> None:
    """Retrain the tokenizer on data_samples/source and store it in data_samples/tokenizer.

    Run `python -m m3ref.tiny` after editing the sample texts, then `make notebooks`.
    """
    tok = build_tokenizer(vocab_size=vocab_size, retrain=True)
    os.makedirs(TOKENIZER_DIR, exist_ok=True)
    tok.backend_tokenizer.save(os.path.join(TOKENIZER_DIR, "tokenizer.json"))
    with open(os.path.join(TOKENIZER_DIR, "trained_on.json"), "w", encoding="utf-8") as f:
        json.dump({"texts_sha256": texts_digest(vocab_size=vocab_size), "vocab_size": vocab_size}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    write_shipped_tokenizer()
