#!/usr/bin/env python3
"""Generate the small fixtures of sculpt's GGUF import tests, under ``tests/fixtures/gguf/``.

* ``dequant.safetensors``: for each GGML type, ``TYPE.blocks`` (raw GGUF bytes of a few blocks,
  u8) and ``TYPE.values`` (their f32 dequantisation by the ``gguf`` package's
  ``gguf.quants.dequantize``; Q8_K, which it lacks, by its one-line rule d * q). Q4_0, Q4_1,
  Q5_0, Q5_1, Q8_0 and BF16 blocks come from ``gguf.quants.quantize`` of random values; the
  K-quant blocks are random bytes with finite f16 scales.
* ``tiny.gguf``: a tiny llama (2 layers, width 32, 4 query / 2 key-value heads, untied head,
  266-token byte-level BPE vocabulary with control and user-defined tokens, BOS added), with
  F32, F16, Q8_0, Q4_0 and Q4_1 tensors, written by ``gguf.GGUFWriter``.
* ``tiny_reference.safetensors`` / ``tiny_reference.json``: transformers' conversion of
  ``tiny.gguf`` (``from_pretrained(..., gguf_file=...)``): three whole tensors, the sum and
  absolute sum of every tensor, the config, and the token ids of a few texts.
* ``tiny_sp.gguf`` / ``tiny_sp_reference.json``: the same model with one layer, a 284-token
  SentencePiece vocabulary (``tokenizer.ggml.model`` "llama": byte fallback, merges recovered
  from the scores, BOS by default) and Llama 3.1 rope scaling stored as llama.cpp stores it
  (``rope_freqs.weight``, factor 8, rope theta 500000), and transformers' conversion of it
  (no whole tensors; transformers ignores ``rope_freqs.weight``).

Usage: ``python tools/make_gguf_fixtures.py`` (needs numpy, gguf, torch, transformers; seeded).
"""

import json
import math
import os

import numpy as np
import torch
from gguf import GGMLQuantizationType as Q
from gguf import GGUFWriter, quants
from safetensors.numpy import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "gguf")

QUANTIZABLE = [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.BF16]
# K-quant layouts: bytes per block and the offsets of their f16 scales.
K_QUANTS = {Q.Q2_K: (84, [80, 82]), Q.Q3_K: (110, [108]), Q.Q4_K: (144, [0, 2]), Q.Q5_K: (176, [0, 2]), Q.Q6_K: (210, [208])}

TEXTS = [
    "Hello world, the cat sat on the mat.",
    "<|im_start|>user\nthere in the <think> area<|im_end|>",
    "  leading spaces, tabs\tand é ü 日本 😀 123",
    "<|user|> the cat sat</s>",
]


def random_scales(rng, count):
    """f16 scales of moderate size, as bytes."""
    return (rng.uniform(0.001, 0.05, count) * rng.choice([-1, 1], count)).astype(np.float16).view(np.uint8)


def dequant_fixtures(rng):
    tensors = {}
    for qtype in QUANTIZABLE:
        values = rng.standard_normal((2, 64)).astype(np.float32)
        blocks = quants.quantize(values, qtype)
        tensors[f"{qtype.name}.blocks"] = blocks.reshape(-1).view(np.uint8)
        tensors[f"{qtype.name}.values"] = quants.dequantize(blocks, qtype).reshape(-1).astype(np.float32)
    for qtype, (size, scale_offsets) in K_QUANTS.items():
        blocks = rng.integers(0, 256, (2, size), dtype=np.uint8)
        for offset in scale_offsets:
            blocks[:, offset:offset + 2] = random_scales(rng, 2).reshape(2, 2)
        tensors[f"{qtype.name}.blocks"] = blocks.reshape(-1)
        tensors[f"{qtype.name}.values"] = quants.dequantize(blocks, qtype).reshape(-1).astype(np.float32)
    # Q8_K: an f32 scale, 256 signed bytes, 16 i16 block sums (not used to dequantise).
    d = np.array([0.0123, -0.0456], dtype=np.float32)
    qs = rng.integers(-128, 128, (2, 256), dtype=np.int8)
    sums = rng.integers(-1000, 1000, (2, 16), dtype=np.int16)
    blocks = np.concatenate([d.reshape(2, 1).view(np.uint8), qs.view(np.uint8), sums.view(np.uint8)], axis=1)
    tensors["Q8_K.blocks"] = blocks.reshape(-1)
    tensors["Q8_K.values"] = (d.reshape(2, 1) * qs.astype(np.float32)).reshape(-1)
    f16 = rng.standard_normal(8).astype(np.float16)
    tensors["F16.blocks"], tensors["F16.values"] = f16.view(np.uint8), f16.astype(np.float32)
    save_file(tensors, os.path.join(OUT, "dequant.safetensors"))


def byte_alphabet():
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def byte_level_vocabulary(w):
    """266 tokens: 3 control, the 256 byte stand-ins, 6 merged, 1 user-defined; BOS added."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    merges = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r"]
    tokens = specials + byte_alphabet() + [m.replace(" ", "") for m in merges] + ["<think>"]
    types = [3] * len(specials) + [1] * (len(tokens) - len(specials) - 1) + [4]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(0)
    w.add_add_bos_token(True)
    w.add_chat_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}")
    return len(tokens)


def sentencepiece_vocabulary(w):
    """284 tokens: <unk> (unknown), <s> and </s> (control), the 256 <0xNN> byte tokens, 24
    scored pieces and one user-defined token; no merges (they come from the scores), no
    add_bos_token key (SentencePiece adds BOS by default)."""
    pieces = ["▁", "e", "t", "a", "h", "c", "s", "o", "n", "▁t", "he", "▁the", "at", "▁c", "▁cat", "▁s", "▁sat",
              "on", "▁on", "in", "▁a", "er", "▁▁", "▁▁▁▁"]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces + ["<|user|>"]
    types = [2, 3, 3] + [6] * 256 + [1] * len(pieces) + [4]
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))] + [0.0]
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_scores(scores)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    return len(tokens)


def llama3_rope_divisors(head_dim, theta, factor, low_freq_factor=1.0, high_freq_factor=4.0, original_context=8192):
    """What llama.cpp's converter writes as ``rope_freqs.weight`` for Llama 3.1 rope scaling."""
    divisors = []
    for i in range(0, head_dim, 2):
        wavelength = 2 * math.pi * theta ** (i / head_dim)
        if wavelength < original_context / high_freq_factor:
            divisors.append(1.0)
        elif wavelength > original_context / low_freq_factor:
            divisors.append(factor)
        else:
            smooth = (original_context / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor)
            divisors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(divisors, dtype=np.float32)


def tiny_gguf(rng, path, vocabulary, layers, rope_theta=10000.0, llama3_rope_factor=None, arch="llama"):
    """arch "qwen2" adds the q, k, v biases (and llama.cpp's qwen2 converter keeps transformers'
    rotary row order, so the same matrices mean a different model there)."""
    hidden, ff, heads, kv_heads = 32, 64, 4, 2
    head_dim = hidden // heads
    w = GGUFWriter(path, arch)
    vocab = vocabulary(w)
    w.add_context_length(64)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(rope_theta)
    w.add_vocab_size(vocab)

    def matrix(rows, cols):
        return (rng.standard_normal((rows, cols)) * 0.2).astype(np.float32)

    def quantized(name, values, qtype):
        w.add_tensor(name, quants.quantize(values, qtype), raw_dtype=qtype)

    if llama3_rope_factor is not None:
        w.add_tensor("rope_freqs.weight", llama3_rope_divisors(head_dim, rope_theta, llama3_rope_factor))
    quantized("token_embd.weight", matrix(vocab, hidden), Q.Q8_0)
    w.add_tensor("output.weight", matrix(vocab, hidden).astype(np.float16))
    w.add_tensor("output_norm.weight", (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32))
    for layer in range(layers):
        p = f"blk.{layer}."
        w.add_tensor(p + "attn_q.weight", matrix(hidden, hidden).astype(np.float16))
        quantized(p + "attn_k.weight", matrix(kv_heads * head_dim, hidden), Q.Q4_0)
        quantized(p + "attn_v.weight", matrix(kv_heads * head_dim, hidden), Q.Q4_1)
        w.add_tensor(p + "attn_output.weight", matrix(hidden, hidden))
        quantized(p + "ffn_gate.weight", matrix(ff, hidden), Q.Q8_0)
        quantized(p + "ffn_up.weight", matrix(ff, hidden), Q.Q4_1)
        quantized(p + "ffn_down.weight", matrix(hidden, ff), Q.Q4_0)
        w.add_tensor(p + "attn_norm.weight", (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32))
        w.add_tensor(p + "ffn_norm.weight", (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32))
        if arch == "qwen2":
            for name, rows in [("attn_q", hidden), ("attn_k", kv_heads * head_dim), ("attn_v", kv_heads * head_dim)]:
                w.add_tensor(p + name + ".bias", (0.2 * rng.standard_normal(rows)).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def tiny_reference(path, prefix, whole_tensors):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.dirname(path), os.path.basename(path)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    state = {k: v.float() for k, v in model.state_dict().items()}
    whole = ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
             "model.layers.1.mlp.down_proj.weight"]
    if whole_tensors:
        save_file({k: state[k].numpy() for k in whole}, os.path.join(folder, f"{prefix}_reference.safetensors"))
    c = model.config
    reference = {
        "tensors": {k: {"shape": list(v.shape), "sum": v.double().sum().item(), "abs_sum": v.double().abs().sum().item()}
                    for k, v in state.items()},
        "config": {k: getattr(c, k) for k in ["hidden_size", "intermediate_size", "num_hidden_layers",
                                              "num_attention_heads", "num_key_value_heads", "vocab_size",
                                              "max_position_embeddings", "tie_word_embeddings", "bos_token_id",
                                              "eos_token_id", "pad_token_id"]},
        "token_ids": {text: tokenizer.encode(text) for text in TEXTS},
    }
    with open(os.path.join(folder, f"{prefix}_reference.json"), "w") as f:
        json.dump(reference, f, indent=1, ensure_ascii=False)
        f.write("\n")


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(0)
    dequant_fixtures(rng)
    path = os.path.join(OUT, "tiny.gguf")
    tiny_gguf(rng, path, byte_level_vocabulary, layers=2)
    tiny_reference(path, "tiny", whole_tensors=True)
    path = os.path.join(OUT, "tiny_sp.gguf")
    tiny_gguf(np.random.default_rng(1), path, sentencepiece_vocabulary, layers=1, rope_theta=500000.0,
              llama3_rope_factor=8.0)
    tiny_reference(path, "tiny_sp", whole_tensors=False)
    path = os.path.join(OUT, "tiny_qwen2.gguf")
    tiny_gguf(np.random.default_rng(2), path, byte_level_vocabulary, layers=2, arch="qwen2")
    tiny_reference(path, "tiny_qwen2", whole_tensors=False)
    for name in sorted(os.listdir(OUT)):
        print(f"{name}: {os.path.getsize(os.path.join(OUT, name))} bytes")


if __name__ == "__main__":
    main()
