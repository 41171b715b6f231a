#!/usr/bin/env python3
"""Reference embeddings of all-MiniLM-L6-v2, computed independently of candle: a float64 BERT
forward pass written out in numpy, from the safetensors weights and the model's tokenizer, with
sentence-transformers' pooling (mean over the attention mask, then L2 normalization).

Writes crates/tollgate-providers/tests/data/minilm_reference.json, which the local provider's
test compares against (cosine >= 0.999). Run again only when the model or the sentences change:

    python3 -m venv /tmp/ref && /tmp/ref/bin/pip install numpy safetensors tokenizers
    /tmp/ref/bin/python scripts/minilm_reference.py [MODEL_DIR]
"""
import json
import math
import os
import sys

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

SENTENCES = [
    "What is the capital of France?",
    "what's the capital of france",
    "How do I bake bread?",
    "Paris is the capital and largest city of France.",
    "The quick brown fox jumps over the lazy dog.",
    "Rate limits hold exactly across every replica of the gateway, même en français 🚀.",
]


def layer_norm(x, w, b, eps=1e-12):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def gelu(x):
    # The exact (erf) GELU that BERT's "gelu" means.
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def embed(weights, tokenizer, text, heads=12, layers=6):
    w = {k: v.astype(np.float64) for k, v in weights.items() if v.dtype.kind == "f"}
    enc = tokenizer.encode(text)
    ids = np.array(enc.ids)
    n = len(ids)
    x = (
        w["embeddings.word_embeddings.weight"][ids]
        + w["embeddings.position_embeddings.weight"][np.arange(n)]
        + w["embeddings.token_type_embeddings.weight"][np.zeros(n, dtype=int)]
    )
    x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
    d = x.shape[1]
    hd = d // heads
    for i in range(layers):
        p = f"encoder.layer.{i}."
        lin = lambda t, name: t @ w[p + name + ".weight"].T + w[p + name + ".bias"]
        q = lin(x, "attention.self.query").reshape(n, heads, hd).transpose(1, 0, 2)
        k = lin(x, "attention.self.key").reshape(n, heads, hd).transpose(1, 0, 2)
        v = lin(x, "attention.self.value").reshape(n, heads, hd).transpose(1, 0, 2)
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(hd)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        probs = scores / scores.sum(-1, keepdims=True)
        ctx = (probs @ v).transpose(1, 0, 2).reshape(n, d)
        x = layer_norm(lin(ctx, "attention.output.dense") + x,
                       w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"])
        h = gelu(lin(x, "intermediate.dense"))
        x = layer_norm(lin(h, "output.dense") + x, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"])
    pooled = x.mean(0)  # a single input has no padding: every token counts
    return pooled / np.linalg.norm(pooled)


def main():
    default = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "tollgate/models")
    model_dir = os.path.join(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("TOLLGATE_MODEL_DIR", default),
                             "all-minilm-l6-v2")
    weights = load_file(os.path.join(model_dir, "model.safetensors"))
    tokenizer = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(256)
    out = [{"text": s, "embedding": [round(float(v), 7) for v in embed(weights, tokenizer, s)]} for s in SENTENCES]
    path = os.path.join(os.path.dirname(__file__), "..", "crates/tollgate-providers/tests/data/minilm_reference.json")
    with open(path, "w") as f:
        json.dump(out, f)
    vecs = [np.array(o["embedding"]) for o in out]
    print(f"wrote {len(out)} reference vectors; cos(q, paraphrase) = {vecs[0] @ vecs[1]:.4f}, cos(q, bread) = {vecs[0] @ vecs[2]:.4f}")


if __name__ == "__main__":
    main()
