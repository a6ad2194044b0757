"""The runtime: drafttrain's own compact transformer for decoding HF Llama/Qwen2/Mistral checkpoints.

It owns the forward used for decoding (static KV cache, tree attention masks, self-draft views
that skip sublayers or quantize activations) and reproduces `transformers`' logits.
"""

from drafttrain.runtime.cache import KVCache
from drafttrain.runtime.loader import load_model, load_tokenizer, read_model_args
from drafttrain.runtime.model import ModelArgs, Transformer
from drafttrain.runtime.views import SelfDraftView

__all__ = [
    "KVCache", "ModelArgs", "SelfDraftView", "Transformer",
    "load_model", "load_tokenizer", "read_model_args",
]
