"""m3ref: a reference implementation of M3-Embedding (BGE-M3).

Chen et al., "M3-Embedding: Multi-Linguality, Multi-Functionality, Multi-Granularity Text
Embeddings Through Self-Knowledge Distillation", arXiv:2402.03216.

    from m3ref import M3Model, M3Config
    model = M3Model.from_pretrained("BAAI/bge-m3")   # or a local checkpoint directory
    out = model.encode(["Hello world"])
"""
from .config import M3Config, TrainConfig
from .errors import M3Error
from .inference import EncodeOutput
from .model import Embeddings, M3Model

__all__ = ["M3Config", "TrainConfig", "M3Error", "M3Model", "EncodeOutput", "Embeddings"]
__version__ = "0.1.0"
