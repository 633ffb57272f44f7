#!/usr/bin/env python3
"""Generate the small reference fixtures that sculpt's Rust parity tests read.

Writes, under ``tests/fixtures/`` (or ``--out DIR``):

* ``tokenizer.json``                 -- tiny Unigram tokenizer (T5 conventions: 0=<pad>, 1=</s>, 2=<unk>)
* ``t5_v1_0/``, ``t5_v1_1/``         -- tiny random Hugging Face T5ForConditionalGeneration folders
  (config.json, generation_config.json, model.safetensors, tokenizer.json, tokenizer_config.json)
  plus ``reference.safetensors`` / ``reference.json`` (float64 reference forward, hidden states,
  gradients, a 3-step AdamW trajectory and greedy generations, stored as float32)
* ``llama_gqa/``, ``llama_tied/``    -- tiny random Hugging Face LlamaForCausalLM folders (config.json,
  model.safetensors, tokenizer.json) plus ``reference.safetensors`` / ``reference.json`` (float64
  reference logits, loss, hidden states, every gradient, rotary frequencies, greedy generations)
* ``qwen2/``, ``qwen3/``, ``mistral/`` -- the same for Qwen2ForCausalLM, Qwen3ForCausalLM and
  MistralForCausalLM
* ``svd.safetensors``                -- matrices and their float64 SVDs
* ``projection.safetensors``         -- SVD-constrained update projections

Everything is seeded and deterministic; the CPU run is canonical.

Usage::

    pip install -r tools/requirements.txt && python tools/make_fixtures.py [--device cuda] [--out DIR]

``--only llama_gqa,llama_tied`` regenerates just the named fixtures (reusing the existing
``tokenizer.json``) and leaves every other file as it is.

A second mode checks that a checkpoint written by sculpt loads in transformers and reproduces
reference logits::

    python tools/make_fixtures.py check-checkpoint DIR [--reference FILE] [--dtype float64|float32] [--tol 1e-4]
"""

import os

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
from collections import Counter  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors  # noqa: E402

import transformers  # noqa: E402
from transformers import T5Config, T5ForConditionalGeneration  # noqa: E402

transformers.logging.set_verbosity_error()

SEED = 1234
SPM_SPACE = "\u2581"  # "▁", sentencepiece's word-boundary marker
SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>"]  # ids 0, 1, 2
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
DECODER_START_ID = 0

WORDS = (
    "copy reverse sort count translate summarize question answer the cat dog house is small big red "
    "blue green and of to in on one two three four five what how many letters numbers word sentence "
    "first last yes no not"
).split()
LETTERS = list("abcdefghijklmnopqrstuvwxyz")
DIGITS = list("0123456789")
PUNCT = [":", ",", ".", "?"]

COMMON_CONFIG = dict(
    d_model=32,
    d_kv=8,
    num_heads=4,
    d_ff=64,
    num_layers=2,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=20,
    dropout_rate=0.0,
    layer_norm_epsilon=1e-6,
    initializer_factor=1.0,
    decoder_start_token_id=DECODER_START_ID,
    pad_token_id=PAD_ID,
    eos_token_id=EOS_ID,
)
MODEL_SPECS = {
    "t5_v1_0": dict(feed_forward_proj="relu", tie_word_embeddings=True, num_decoder_layers=2, seed=SEED + 10),
    "t5_v1_1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False, num_decoder_layers=3, seed=SEED + 20),
}

# (source text, target text); source lengths 9/6/14 tokens, target lengths 7/4/2 (with </s>).
BATCH_EXAMPLES = [
    ("copy: a b c d e f", "a b c d e f"),
    ("reverse: 3 1 2", "2 1 3"),
    ("question: is the big red dog in the house and not small", "yes"),
]
# Chosen so that the outputs cover: stop on </s> after several tokens, immediate </s>, and running
# to max_new_tokens; every greedy step has a top-1/top-2 logit margin >= MIN_GENERATE_MARGIN.
GENERATE_INPUTS = ["copy: a b c", "reverse: a b c d e", "what is the first letter"]
MIN_GENERATE_MARGIN = 0.03

ADAMW = dict(
    lr=1e-2,
    betas=[0.9, 0.999],
    eps=1e-8,
    weight_decay=0.1,
    max_grad_norm=1.0,
    warmup_steps=2,
    steps=3,
)
GENERATE_MAX_NEW_TOKENS = 8

SVD_CASES = [
    "random_17x9",
    "random_9x17",
    "random_64x64",
    "random_65x33",
    "rank_deficient_40x24",
    "clustered_32x32",
    "graded_48x48",
    "zero_8x5",
    "row_1x13",
    "col_13x1",
    "tall_200x16",
    "wide_16x200",
]
PROJECTION_CASES = [("p24x16_k5", 24, 16, 5), ("p16x40_k12", 16, 40, 12), ("p20x20_k15", 20, 20, 15)]


def patch_t5_layernorm_for_float64():
    """transformers' T5LayerNorm always computes the variance in float32 (even for a float64
    model), which would cap the reference at float32 accuracy.  For float64 inputs compute it in
    float64; float32/16 behaviour is unchanged."""
    from transformers.models.t5 import modeling_t5

    cls = modeling_t5.T5LayerNorm
    if getattr(cls, "_sculpt_patched", False):
        return
    original = cls.forward

    def forward(self, hidden_states):
        if hidden_states.dtype != torch.float64:
            return original(self, hidden_states)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))

    cls.forward = forward
    cls._sculpt_patched = True


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def save_tensors(tensors, path, metadata=None):
    # safetensors serialises __metadata__ from a hash map (random key order), so several keys
    # would make the file bytes differ between runs: fold everything into a single JSON key.
    if metadata is not None:
        metadata = {"info": json.dumps(metadata, sort_keys=True)}
    save_file(tensors, path, metadata=metadata)
    os.chmod(path, 0o644)  # safetensors creates files 0600


def f32(t):
    return t.detach().to("cpu", torch.float32).contiguous()


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


def tokenizer_corpus(rng, n=4000):
    texts = []
    for _ in range(n):
        kind = rng.randrange(5)
        if kind == 0:
            texts.append("copy: " + " ".join(rng.choice(LETTERS) for _ in range(rng.randint(1, 8))))
        elif kind == 1:
            texts.append("reverse: " + " ".join(rng.choice(DIGITS) for _ in range(rng.randint(1, 8))))
        elif kind == 2:
            op = rng.choice(["sort", "count"])
            texts.append(op + ": " + " ".join(rng.choice(LETTERS + DIGITS) for _ in range(rng.randint(1, 8))))
        elif kind == 3:
            texts.append(rng.choice(["translate", "summarize", "question", "answer"]) + ": "
                         + " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 10))))
        else:
            texts.append(" ".join(rng.choice(WORDS + LETTERS) for _ in range(rng.randint(3, 10)))
                         + rng.choice(["", ".", "?", ","]))
    return texts


def build_tokenizer():
    """A Unigram tokenizer with a fixed piece inventory and frequency-estimated scores.

    The tokenizers library's UnigramTrainer is not deterministic (equal-score pieces come out in
    hash order) and on such a tiny corpus picks odd pieces, so the inventory is fixed here and the
    piece log-probabilities are estimated by counting a deterministic segmentation of a generated
    corpus (one EM-style counting pass with add-one smoothing).
    """
    pieces = [SPM_SPACE] + PUNCT + LETTERS + DIGITS
    pieces += [SPM_SPACE + c for c in LETTERS + DIGITS]
    pieces += [SPM_SPACE + w for w in WORDS if SPM_SPACE + w not in pieces]

    counts = Counter()
    for text in tokenizer_corpus(random.Random(SEED)):
        for word in text.split():
            # split trailing punctuation the way the Unigram model will
            core = word.rstrip("".join(PUNCT))
            tail = word[len(core):]
            if SPM_SPACE + core in pieces:
                counts[SPM_SPACE + core] += 1
            else:
                counts[SPM_SPACE] += 1
                counts.update(core)
            counts.update(tail)
    total = sum(counts[p] + 1 for p in pieces)
    vocab = [(s, 0.0) for s in SPECIAL_TOKENS]
    vocab += [(p, math.log((counts[p] + 1) / total)) for p in pieces]
    # round scores so the JSON is short and identical everywhere
    vocab = [(p, round(s, 6)) for p, s in vocab]

    tok = Tokenizer(models.Unigram(vocab, unk_id=UNK_ID, byte_fallback=False))
    tok.add_special_tokens(SPECIAL_TOKENS)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(),
         pre_tokenizers.Metaspace(replacement=SPM_SPACE, prepend_scheme="always", split=True)]
    )
    tok.decoder = decoders.Metaspace(replacement=SPM_SPACE, prepend_scheme="always", split=True)
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", EOS_ID)]
    )
    for i, s in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(s) == i, (s, tok.token_to_id(s))
    return tok


def save_tokenizer(tok, path):
    # Tokenizer.save writes pretty JSON; keys are in a fixed order, so the file is reproducible.
    tok.save(path, pretty=True)


def hf_tokenizer(tokenizer_file):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_file=tokenizer_file, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


TOKENIZER_CONFIG = {
    "tokenizer_class": "PreTrainedTokenizerFast",
    "pad_token": "<pad>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "model_max_length": 512,
    "clean_up_tokenization_spaces": False,
}


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def make_config(spec, vocab_size):
    kw = dict(COMMON_CONFIG)
    kw.update(
        vocab_size=vocab_size,
        feed_forward_proj=spec["feed_forward_proj"],
        tie_word_embeddings=spec["tie_word_embeddings"],
        num_decoder_layers=spec["num_decoder_layers"],
    )
    return T5Config(**kw)


def heads_tied(model):
    return model.lm_head.weight.data_ptr() == model.shared.weight.data_ptr()


def build_model(spec, vocab_size, tokenizer_vocab_size):
    config = make_config(spec, vocab_size)
    model = T5ForConditionalGeneration(config)
    if not spec["tie_word_embeddings"]:
        # transformers 5.x: T5Config forces tie_word_embeddings=True and only records
        # scale_decoder_outputs=False, so lm_head is still tied to `shared`.  Untie by hand.
        if heads_tied(model):
            model.lm_head.weight = torch.nn.Parameter(torch.empty(vocab_size, config.d_model))
        model.all_tied_weights_keys.pop("lm_head.weight", None)
        assert not heads_tied(model)
        assert not config.scale_decoder_outputs
    else:
        assert heads_tied(model) and config.scale_decoder_outputs

    g = torch.Generator().manual_seed(spec["seed"])
    d_model = config.d_model
    with torch.no_grad():
        for name, p in model.named_parameters():  # registration order, deterministic
            if name == "shared.weight":
                w = torch.randn(p.shape, generator=g)
            elif name == "lm_head.weight":
                w = torch.randn(p.shape, generator=g) * (1.5 / math.sqrt(d_model))
            elif name.endswith("relative_attention_bias.weight"):
                w = torch.randn(p.shape, generator=g) * 0.5
            elif "layer_norm" in name:
                w = torch.rand(p.shape, generator=g) + 0.5
            elif p.dim() == 2:
                fan_in = p.shape[1]
                scale = 0.5 if name.endswith(".q.weight") else 1.0
                w = torch.randn(p.shape, generator=g) * (scale / math.sqrt(fan_in))
            else:
                raise RuntimeError(f"unexpected parameter {name} {tuple(p.shape)}")
            if name in ("shared.weight", "lm_head.weight"):
                # A larger </s> row makes some greedy generations stop early (exercises the EOS
                # path); smaller rows for the unused padded ids keep them from dominating argmax.
                w[EOS_ID] *= 2.5
                w[tokenizer_vocab_size:] *= 0.5
            p.copy_(w)
    model.eval()
    return model


def write_model_dir(model, spec, model_dir, tokenizer_path):
    os.makedirs(model_dir, exist_ok=True)
    model.save_pretrained(model_dir)
    cfg_path = os.path.join(model_dir, "config.json")
    cfg = json.load(open(cfg_path))
    # Classic HF layout: tie_word_embeddings=false for v1.1.  transformers 5 always writes true
    # (plus scale_decoder_outputs); both keys are written so old and new readers agree.
    cfg["tie_word_embeddings"] = spec["tie_word_embeddings"]
    cfg["scale_decoder_outputs"] = spec["tie_word_embeddings"]
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    os.chmod(os.path.join(model_dir, "model.safetensors"), 0o644)
    shutil.copyfile(tokenizer_path, os.path.join(model_dir, "tokenizer.json"))
    with open(os.path.join(model_dir, "tokenizer_config.json"), "w") as f:
        json.dump(TOKENIZER_CONFIG, f, indent=2, sort_keys=True)
        f.write("\n")


def make_batch(tok):
    src = [tok.encode(s).ids for s, _ in BATCH_EXAMPLES]
    tgt = [tok.encode(t).ids for _, t in BATCH_EXAMPLES]
    for ids in src + tgt:
        assert UNK_ID not in ids
    B, S, T = len(src), max(map(len, src)), max(map(len, tgt))
    input_ids = torch.zeros(B, S, dtype=torch.int64)
    attention_mask = torch.zeros(B, S, dtype=torch.int64)
    labels = torch.full((B, T), -100, dtype=torch.int64)
    decoder_input_ids = torch.zeros(B, T, dtype=torch.int64)
    for b in range(B):
        input_ids[b, : len(src[b])] = torch.tensor(src[b])
        attention_mask[b, : len(src[b])] = 1
        labels[b, : len(tgt[b])] = torch.tensor(tgt[b])
    # exact shift-right of labels (what transformers does when only labels are given): start id 0,
    # then labels[:, :-1] with -100 -> 0.  A shorter row therefore has its </s> (1) at position
    # len(target), followed by pads.
    decoder_input_ids[:, 0] = DECODER_START_ID
    decoder_input_ids[:, 1:] = labels[:, :-1].clamp(min=0)
    return dict(input_ids=input_ids, attention_mask=attention_mask,
                decoder_input_ids=decoder_input_ids, labels=labels)


def forward_with_blocks(model, batch, device):
    """Forward with hidden states; also captures each T5Block's raw output via hooks."""
    block_out = {"encoder": [], "decoder": []}
    hooks = []
    for stack in ("encoder", "decoder"):
        for blk in getattr(model, stack).block:
            hooks.append(blk.register_forward_hook(
                lambda m, a, o, s=stack: block_out[s].append(o[0] if isinstance(o, tuple) else o)))
    try:
        out = model(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            decoder_input_ids=batch["decoder_input_ids"].to(device),
            labels=batch["labels"].to(device),
            output_hidden_states=True,
        )
    finally:
        for h in hooks:
            h.remove()
    return out, block_out


def adamw_trajectory(model, batch, device):
    params = list(model.named_parameters())
    opt = torch.optim.AdamW(
        [p for _, p in params], lr=ADAMW["lr"], betas=tuple(ADAMW["betas"]), eps=ADAMW["eps"],
        weight_decay=ADAMW["weight_decay"], foreach=False,
    )
    warm = ADAMW["warmup_steps"]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    losses, norms, lrs = [], [], []
    model.train()
    for _ in range(ADAMW["steps"]):
        opt.zero_grad(set_to_none=True)
        out = model(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            decoder_input_ids=batch["decoder_input_ids"].to(device),
            labels=batch["labels"].to(device),
        )
        out.loss.backward()
        norm = torch.nn.utils.clip_grad_norm_([p for _, p in params], max_norm=ADAMW["max_grad_norm"])
        losses.append(out.loss.detach())
        norms.append(norm.detach())
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    model.eval()
    return {n: p.detach() for n, p in params}, losses, norms, lrs


def greedy_generate(model, tok, text, device):
    ids = torch.tensor([tok.encode(text).ids], dtype=torch.int64, device=device)
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        num_beams=1,
        max_new_tokens=GENERATE_MAX_NEW_TOKENS,
        output_logits=True,
        return_dict_in_generate=True,
        use_cache=False,
    )
    seq = out.sequences[0].tolist()
    assert seq[0] == DECODER_START_ID
    # transformers 5.x sizes the default generation cache from config.num_layers, so generate()
    # with the default cache raises IndexError when num_decoder_layers > num_layers (t5_v1_1).
    # Cross-check the cache-free result against an explicitly created (growable) cache.
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    cached = model.generate(
        input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, num_beams=1,
        max_new_tokens=GENERATE_MAX_NEW_TOKENS, cache=EncoderDecoderCache(DynamicCache(), DynamicCache()),
    )
    assert cached[0].tolist() == seq, (text, cached[0].tolist(), seq)
    margins = []
    for step_logits in out.logits:
        top2 = torch.topk(step_logits[0].double(), 2).values
        margins.append(float(top2[0] - top2[1]))
    return ids[0].tolist(), seq[1:], margins


def relative_position_buckets(config):
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = torch.arange(-30, 31)
    nb, md = config.relative_attention_num_buckets, config.relative_attention_max_distance
    bi = T5Attention._relative_position_bucket(rel, bidirectional=True, num_buckets=nb, max_distance=md)
    uni = T5Attention._relative_position_bucket(rel, bidirectional=False, num_buckets=nb, max_distance=md)
    return {
        "note": "relative_position = key_position - query_position; encoder uses bidirectional, "
                "decoder self-attention unidirectional",
        "relative_positions": rel.tolist(),
        "bidirectional": bi.tolist(),
        "unidirectional": uni.tolist(),
    }


def max_rel(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    denom = b.abs().max().item()
    return (a - b).abs().max().item() / (denom if denom > 0 else 1.0)


def make_model_fixture(name, spec, tok, tokenizer_path, out_dir, device):
    vocab_size = tok.get_vocab_size()
    padded_vocab = ((vocab_size + 7) // 8) * 8
    if padded_vocab == vocab_size:
        padded_vocab += 8  # always keep a few unused rows, like real T5 (32128 > 32100)
    model_dir = os.path.join(out_dir, name)
    model = build_model(spec, padded_vocab, vocab_size)
    write_model_dir(model, spec, model_dir, tokenizer_path)

    # ---- reload: the references are computed from exactly the saved float32 weights ----
    saved = load_file(os.path.join(model_dir, "model.safetensors"))
    loaded, info = T5ForConditionalGeneration.from_pretrained(model_dir, output_loading_info=True)
    loaded.eval()
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    param_names = [n for n, _ in loaded.named_parameters()]
    assert set(param_names) == set(saved.keys()), (set(param_names) ^ set(saved.keys()))
    for n, p in loaded.named_parameters():
        assert p.dtype == torch.float32 and torch.equal(p.detach(), saved[n]), n
        assert torch.equal(p.detach(), dict(model.named_parameters())[n].detach()), n
    assert heads_tied(loaded) == spec["tie_word_embeddings"]
    assert loaded.config.scale_decoder_outputs == spec["tie_word_embeddings"]
    if not spec["tie_word_embeddings"]:
        assert "lm_head.weight" in saved and not torch.equal(saved["lm_head.weight"], saved["shared.weight"])

    batch = make_batch(tok)
    assert torch.equal(loaded._shift_right(batch["labels"]), batch["decoder_input_ids"])
    with torch.no_grad():
        l_orig = model(**{k: v for k, v in batch.items()}).logits
        l_load = loaded(**{k: v for k, v in batch.items()}).logits
    assert torch.equal(l_orig, l_load), "reloaded model gives different logits"

    # ---- float64 reference forward / backward ----
    ref = copy.deepcopy(loaded).double().to(device)
    assert heads_tied(ref) == spec["tie_word_embeddings"]
    ref.zero_grad(set_to_none=True)
    out, blocks = forward_with_blocks(ref, batch, device)
    out.loss.backward()

    tensors = {k: v.clone() for k, v in batch.items()}
    tensors["logits"] = f32(out.logits)
    tensors["loss"] = f32(out.loss)
    enc_hs, dec_hs = out.encoder_hidden_states, out.decoder_hidden_states
    for i, h in enumerate(enc_hs):
        tensors[f"encoder_hidden_states.{i}"] = f32(h)
    for i, h in enumerate(dec_hs):
        tensors[f"decoder_hidden_states.{i}"] = f32(h)
    for i, h in enumerate(blocks["encoder"]):
        tensors[f"encoder_block_output.{i}"] = f32(h)
    for i, h in enumerate(blocks["decoder"]):
        tensors[f"decoder_block_output.{i}"] = f32(h)
    assert len(enc_hs) == loaded.config.num_layers + 1 and len(dec_hs) == loaded.config.num_decoder_layers + 1
    assert torch.equal(enc_hs[-1], out.encoder_last_hidden_state)
    assert torch.equal(enc_hs[0], ref.shared(batch["input_ids"].to(device)))
    grads64 = {}
    for n, p in ref.named_parameters():
        assert p.grad is not None, n
        grads64[n] = p.grad.detach().clone()
        tensors[f"grad.{n}"] = f32(p.grad)

    # float32 forward/backward to report the expected float32 deviation
    m32 = copy.deepcopy(loaded).to(device)
    m32.zero_grad(set_to_none=True)
    out32, _ = forward_with_blocks(m32, batch, device)
    out32.loss.backward()
    grad_dev = max(max_rel(p.grad, grads64[n]) for n, p in m32.named_parameters())

    # ---- AdamW trajectory (float64) and the same in float32 for the deviation estimate ----
    adam_model = copy.deepcopy(loaded).double().to(device)
    params64, losses, norms, lrs = adamw_trajectory(adam_model, batch, device)
    for n, p in params64.items():
        tensors[f"adamw.{n}"] = f32(p)
    for s, (l, g) in enumerate(zip(losses, norms)):
        tensors[f"adamw_loss.{s}"] = f32(l)
        tensors[f"adamw_grad_norm.{s}"] = f32(g)
    params32, losses32, _, _ = adamw_trajectory(copy.deepcopy(loaded).to(device), batch, device)
    adam_dev = max((params32[n].double() - params64[n]).abs().max().item() for n in params64)

    # ---- greedy generation (float64 model, cross-checked against float32) ----
    gens = []
    for text in GENERATE_INPUTS:
        ids, out_ids, margins = greedy_generate(ref, tok, text, device)
        _, out_ids32, _ = greedy_generate(loaded.to(device), tok, text, device)
        assert out_ids == out_ids32, (text, out_ids, out_ids32)
        assert min(margins) >= MIN_GENERATE_MARGIN, (name, text, margins)
        assert all(i < vocab_size for i in out_ids), (name, text, out_ids)
        gens.append({
            "input": text,
            "input_ids": ids,
            "output_ids": out_ids,
            "output_text": tok.decode(out_ids, skip_special_tokens=True),
            "min_top1_top2_logit_margin": round(min(margins), 6),
        })
    loaded.to("cpu")

    cfg = loaded.config
    meta = {
        "model": name,
        "description": "float64 reference computed from the float32 weights in model.safetensors; stored as float32",
        "config": {
            "vocab_size": cfg.vocab_size,
            "tokenizer_vocab_size": vocab_size,
            "d_model": cfg.d_model,
            "d_kv": cfg.d_kv,
            "num_heads": cfg.num_heads,
            "d_ff": cfg.d_ff,
            "num_layers": cfg.num_layers,
            "num_decoder_layers": cfg.num_decoder_layers,
            "relative_attention_num_buckets": cfg.relative_attention_num_buckets,
            "relative_attention_max_distance": cfg.relative_attention_max_distance,
            "feed_forward_proj": cfg.feed_forward_proj,
            "dense_act_fn": cfg.dense_act_fn,
            "is_gated_act": cfg.is_gated_act,
            "tie_word_embeddings": spec["tie_word_embeddings"],
            "scale_decoder_outputs": bool(cfg.scale_decoder_outputs),
            "layer_norm_epsilon": cfg.layer_norm_epsilon,
            "decoder_start_token_id": DECODER_START_ID,
            "pad_token_id": PAD_ID,
            "eos_token_id": EOS_ID,
        },
        "batch": {
            "examples": [{"source": s, "target": t} for s, t in BATCH_EXAMPLES],
            "batch_size": int(batch["input_ids"].shape[0]),
            "source_len": int(batch["input_ids"].shape[1]),
            "target_len": int(batch["labels"].shape[1]),
            "source_lengths": batch["attention_mask"].sum(1).tolist(),
            "target_lengths": (batch["labels"] != -100).sum(1).tolist(),
            "padding": "right, id 0; labels padded with -100; decoder_input_ids = shift_right(labels) "
                       "with start id 0 (pads 0); no decoder_attention_mask (causal mask only)",
            "loss": "CrossEntropy mean over all label tokens != -100 in the whole batch (token-level mean)",
        },
        "num_encoder_hidden_states": len(enc_hs),
        "num_decoder_hidden_states": len(dec_hs),
        "hidden_states_layout": "entry 0 = token embedding (input of block 0); entry i (1..L-1) = output of "
                                "block i-1; last entry = final_layer_norm(output of last block). The raw "
                                "output of every block is in {encoder,decoder}_block_output.{i}. Values at "
                                "padded positions are included.",
        "parameter_names": param_names,
        "adamw": {
            "optimizer": "torch.optim.AdamW (decoupled weight decay, applied to all parameters)",
            "lr": ADAMW["lr"],
            "betas": ADAMW["betas"],
            "eps": ADAMW["eps"],
            "weight_decay": ADAMW["weight_decay"],
            "max_grad_norm": ADAMW["max_grad_norm"],
            "grad_clip": "torch.nn.utils.clip_grad_norm_: total = ||all grads||_2; "
                         "grads *= min(1, max_norm / (total + 1e-6))",
            "schedule": "lr_s = lr * min(1, (s + 1) / warmup_steps), s 0-based",
            "warmup_steps": ADAMW["warmup_steps"],
            "steps": ADAMW["steps"],
            "lr_per_step": lrs,
            "update": "p *= 1 - lr_s*wd; m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2; "
                      "p -= lr_s/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps), t = s+1",
            "loss_per_step": [round(float(x), 7) for x in losses],
            "grad_norm_per_step": [round(float(x), 7) for x in norms],
        },
        "generate": gens,
        "generate_settings": {"do_sample": False, "num_beams": 1, "max_new_tokens": GENERATE_MAX_NEW_TOKENS,
                              "batch_size": 1, "output_ids": "excluding the decoder start token 0"},
        "relative_position_bucket": relative_position_buckets(cfg),
        "float32_deviation": {
            "note": "max deviation of the same computation in float32 (torch CPU) from this float64 reference",
            "logits_max_abs": float((out32.logits.detach().double() - out.logits.detach()).abs().max()),
            "loss_abs": abs(out32.loss.item() - out.loss.item()),
            "grad_max_rel_to_tensor_max": grad_dev,
            "adamw_params_max_abs": adam_dev,
            "adamw_loss_abs": max(abs(float(a) - float(b)) for a, b in zip(losses32, losses)),
        },
        "stats": {
            "logits_std": out.logits.detach().std().item(),
            "loss": out.loss.item(),
        },
    }
    save_tensors({k: v.contiguous() for k, v in tensors.items()}, os.path.join(model_dir, "reference.safetensors"))
    with open(os.path.join(model_dir, "reference.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    return meta


# --------------------------------------------------------------------------------------------
# Decoder-only fixtures (Llama, Qwen2, Qwen3, Mistral)
# --------------------------------------------------------------------------------------------

# transformers' module and classes of each family: (module, config class, model class)
DECODER_FAMILIES = {
    "llama": ("llama", "LlamaConfig", "LlamaForCausalLM"),
    "qwen2": ("qwen2", "Qwen2Config", "Qwen2ForCausalLM"),
    "qwen3": ("qwen3", "Qwen3Config", "Qwen3ForCausalLM"),
    "mistral": ("mistral", "MistralConfig", "MistralForCausalLM"),
}


def decoder_classes(spec):
    import transformers

    _, config_class, model_class = DECODER_FAMILIES[spec.get("family", "llama")]
    return getattr(transformers, config_class), getattr(transformers, model_class)


DECODER_COMMON = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=128,
    rms_norm_eps=1e-6,
    attention_bias=False,
    mlp_bias=False,
    hidden_act="silu",
)
DECODER_EOS_BOOST = 1.5
DECODER_SPECS = {
    # grouped-query attention, separate lm_head, llama3 rope scaling whose wavelength bands
    # (16 and 64 positions) put the head's four frequencies in all three branches;
    # eos_token_id as a list; written in transformers 5's `rope_parameters` layout.
    "llama_gqa": dict(
        num_key_value_heads=2, tie_word_embeddings=False, pad_token_id=PAD_ID, eos_token_id=[EOS_ID, UNK_ID],
        rope_theta=10000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 64},
        legacy_rope_layout=False, seed=SEED + 34,
    ),
    # tied embeddings, plain multi-head attention, linear rope scaling with a small base (so
    # positions turn visibly), no pad_token_id (batches pad with eos); written in the legacy
    # `rope_theta` + `rope_scaling` {"type": ...} layout.
    "llama_tied": dict(
        num_key_value_heads=4, tie_word_embeddings=True, pad_token_id=None, eos_token_id=EOS_ID,
        rope_theta=100.0, rope_scaling={"type": "linear", "factor": 2.0},
        legacy_rope_layout=True, seed=SEED + 42,
    ),
    # q, k and v projections with biases; tied embeddings; grouped-query attention.
    "qwen2": dict(
        family="qwen2", num_key_value_heads=2, tie_word_embeddings=True, pad_token_id=PAD_ID, eos_token_id=EOS_ID,
        rope_theta=1000.0, rope_scaling={"rope_type": "default"}, legacy_rope_layout=False, seed=SEED + 50,
    ),
    # per-head RMS norms on q and k before rope; head_dim 16 (not hidden_size / heads = 8):
    # the attention width (64) differs from the hidden size; separate lm_head.
    "qwen3": dict(
        family="qwen3", num_key_value_heads=2, head_dim=16, tie_word_embeddings=False, pad_token_id=PAD_ID,
        eos_token_id=EOS_ID, rope_theta=1000.0, rope_scaling={"rope_type": "default"},
        legacy_rope_layout=False, seed=SEED + 63,
    ),
    # a sliding window longer than any fixture sequence (sculpt refuses longer ones);
    # grouped-query attention, separate lm_head.
    "mistral": dict(
        family="mistral", num_key_value_heads=2, sliding_window=48, tie_word_embeddings=False,
        pad_token_id=PAD_ID, eos_token_id=EOS_ID, rope_theta=1000.0, rope_scaling={"rope_type": "default"},
        legacy_rope_layout=False, seed=SEED + 82,
    ),
}


def patch_decoders_for_float64():
    """transformers' RMSNorm of each decoder family computes in float32 and its RotaryEmbedding
    makes cos/sin in float32 even for a float64 model, which would cap the reference at float32
    accuracy.  For float64 inputs compute both in float64 (the inverse frequencies themselves
    stay the float32 values transformers derives from the config); float32/16 behaviour is
    unchanged."""
    import importlib

    for module, config_class, _ in DECODER_FAMILIES.values():
        modeling = importlib.import_module(f"transformers.models.{module}.modeling_{module}")
        prefix = config_class[: -len("Config")]
        patch_norm_and_rotary(getattr(modeling, prefix + "RMSNorm"), getattr(modeling, prefix + "RotaryEmbedding"))


def patch_norm_and_rotary(norm, rotary):
    if not getattr(norm, "_sculpt_patched", False):
        original_norm = norm.forward

        def norm_forward(self, hidden_states):
            if hidden_states.dtype != torch.float64:
                return original_norm(self, hidden_states)
            variance = hidden_states.pow(2).mean(-1, keepdim=True)
            return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))

        norm.forward = norm_forward
        norm._sculpt_patched = True

    if not getattr(rotary, "_sculpt_patched", False):
        original_rotary = rotary.forward

        def rotary_forward(self, x, position_ids):
            if x.dtype != torch.float64:
                return original_rotary(self, x, position_ids)
            freqs = position_ids[..., None].double() * self.inv_freq.to(device=x.device, dtype=torch.float64)
            emb = torch.cat((freqs, freqs), dim=-1)
            return emb.cos() * self.attention_scaling, emb.sin() * self.attention_scaling

        rotary.forward = rotary_forward
        rotary._sculpt_patched = True


def decoder_common(spec):
    """DECODER_COMMON as the family's config takes it, with the spec's optional fields."""
    kw = dict(DECODER_COMMON)
    if spec.get("family", "llama") != "llama":
        # Qwen2's biases are fixed on q, k, v; Qwen3 and Mistral have none
        for key in ("attention_bias", "mlp_bias"):
            kw.pop(key)
    for key in ("head_dim", "sliding_window"):
        if key in spec:
            kw[key] = spec[key]
    return kw


def decoder_config(spec, vocab_size):
    config_class, _ = decoder_classes(spec)
    kw = decoder_common(spec)
    kw.update(
        vocab_size=vocab_size,
        num_key_value_heads=spec["num_key_value_heads"],
        tie_word_embeddings=spec["tie_word_embeddings"],
        pad_token_id=spec["pad_token_id"],
        bos_token_id=None,
        eos_token_id=spec["eos_token_id"],
        rope_theta=spec["rope_theta"],
        rope_scaling=dict(spec["rope_scaling"]),
        attn_implementation="eager",
    )
    return config_class(**kw)


def build_decoder(spec, vocab_size, tokenizer_vocab_size):
    _, model_class = decoder_classes(spec)
    model = model_class(decoder_config(spec, vocab_size))
    tied = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert tied == spec["tie_word_embeddings"], (tied, spec)
    g = torch.Generator().manual_seed(spec["seed"])
    d = DECODER_COMMON["hidden_size"]
    with torch.no_grad():
        for name, p in model.named_parameters():  # registration order, deterministic
            if name == "model.embed_tokens.weight":
                w = torch.randn(p.shape, generator=g) * (0.5 if spec["tie_word_embeddings"] else 1.0)
            elif name == "lm_head.weight":
                w = torch.randn(p.shape, generator=g) * (1.5 / math.sqrt(d))
            elif name.endswith("norm.weight"):
                w = torch.rand(p.shape, generator=g) + 0.5
            elif p.dim() == 2:
                scale = 0.5 if name.endswith("q_proj.weight") else 1.0
                w = torch.randn(p.shape, generator=g) * (scale / math.sqrt(p.shape[1]))
            elif name.endswith("proj.bias"):
                w = torch.randn(p.shape, generator=g) * 0.2
            else:
                raise RuntimeError(f"unexpected parameter {name} {tuple(p.shape)}")
            if name in ("model.embed_tokens.weight", "lm_head.weight"):
                # as for T5, a larger </s> row makes some generations stop early (less so than
                # for T5: every prompt here ends with </s>); unused padded ids stay small
                w[EOS_ID] *= DECODER_EOS_BOOST
                w[tokenizer_vocab_size:] *= 0.5
            p.copy_(w)
    model.eval()
    return model


def write_decoder_dir(model, spec, model_dir, tokenizer_path):
    os.makedirs(model_dir, exist_ok=True)
    model.save_pretrained(model_dir)
    cfg_path = os.path.join(model_dir, "config.json")
    cfg = json.load(open(cfg_path))
    cfg.pop("attn_implementation", None)
    if spec["legacy_rope_layout"]:
        # the layout of configs written before transformers 5
        cfg.pop("rope_parameters")
        cfg["rope_theta"] = spec["rope_theta"]
        cfg["rope_scaling"] = dict(spec["rope_scaling"])
    cfg.pop("transformers_version", None)
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    os.chmod(os.path.join(model_dir, "model.safetensors"), 0o644)
    for leftover in ("generation_config.json",):
        path = os.path.join(model_dir, leftover)
        if os.path.exists(path):
            os.remove(path)
    shutil.copyfile(tokenizer_path, os.path.join(model_dir, "tokenizer.json"))


def make_causal_batch(tok, pad_id):
    """source ++ target, right-padded; HF labels (unshifted): -100 on source and padding."""
    rows = [(tok.encode(s).ids, tok.encode(t).ids) for s, t in BATCH_EXAMPLES]
    for src, tgt in rows:
        assert UNK_ID not in src + tgt
    B, S = len(rows), max(len(s) + len(t) for s, t in rows)
    input_ids = torch.full((B, S), pad_id, dtype=torch.int64)
    attention_mask = torch.zeros(B, S, dtype=torch.int64)
    labels = torch.full((B, S), -100, dtype=torch.int64)
    for b, (src, tgt) in enumerate(rows):
        n = len(src) + len(tgt)
        input_ids[b, :n] = torch.tensor(src + tgt)
        attention_mask[b, :n] = 1
        labels[b, len(src):n] = torch.tensor(tgt)
    return dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels)


def decoder_forward(model, batch, device):
    """Forward with hidden states; also captures each decoder layer's raw output via hooks."""
    layer_out = []
    hooks = [layer.register_forward_hook(lambda m, a, o: layer_out.append(o[0] if isinstance(o, tuple) else o))
             for layer in model.model.layers]
    try:
        out = model(**{k: v.to(device) for k, v in batch.items()}, output_hidden_states=True, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return out, layer_out


def decoder_generate(model, tok, text, eos_ids, device):
    ids = torch.tensor([tok.encode(text).ids], dtype=torch.int64, device=device)
    settings = dict(attention_mask=torch.ones_like(ids), do_sample=False, num_beams=1,
                    max_new_tokens=GENERATE_MAX_NEW_TOKENS, eos_token_id=eos_ids, pad_token_id=eos_ids[0])
    out = model.generate(input_ids=ids, output_logits=True, return_dict_in_generate=True, use_cache=False,
                         **settings)
    seq = out.sequences[0].tolist()
    assert seq[: ids.shape[1]] == ids[0].tolist()
    cached = model.generate(input_ids=ids, use_cache=True, **settings)
    assert cached[0].tolist() == seq, (text, cached[0].tolist(), seq)
    margins = [float(torch.topk(step[0].double(), 2).values.diff().abs()) for step in out.logits]
    return ids[0].tolist(), seq[ids.shape[1]:], margins


def make_decoder_fixture(name, spec, tok, tokenizer_path, out_dir, device):
    _, model_class = decoder_classes(spec)
    vocab_size = tok.get_vocab_size()
    padded_vocab = ((vocab_size + 7) // 8) * 8 + 8
    model_dir = os.path.join(out_dir, name)
    model = build_decoder(spec, padded_vocab, vocab_size)
    write_decoder_dir(model, spec, model_dir, tokenizer_path)

    # ---- reload: the references are computed from exactly the saved float32 weights ----
    saved = load_file(os.path.join(model_dir, "model.safetensors"))
    loaded, info = model_class.from_pretrained(model_dir, output_loading_info=True, attn_implementation="eager")
    loaded.eval()
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    param_names = [n for n, _ in loaded.named_parameters()]
    assert set(param_names) == set(saved.keys()), (set(param_names) ^ set(saved.keys()))
    for n, p in loaded.named_parameters():
        assert p.dtype == torch.float32 and torch.equal(p.detach(), saved[n]), n
    assert ("lm_head.weight" in saved) != spec["tie_word_embeddings"]
    assert torch.equal(loaded.model.rotary_emb.inv_freq, model.model.rotary_emb.inv_freq), "rope config reloads"

    eos_ids = spec["eos_token_id"] if isinstance(spec["eos_token_id"], list) else [spec["eos_token_id"]]
    pad_id = spec["pad_token_id"] if spec["pad_token_id"] is not None else eos_ids[0]
    batch = make_causal_batch(tok, pad_id)

    # ---- float64 reference forward / backward ----
    ref = copy.deepcopy(loaded).double().to(device)
    ref.zero_grad(set_to_none=True)
    out, layer_out = decoder_forward(ref, batch, device)
    out.loss.backward()
    hs = out.hidden_states
    L = loaded.config.num_hidden_layers
    assert len(hs) == L + 1 and len(layer_out) == L
    assert torch.equal(hs[0], ref.model.embed_tokens(batch["input_ids"].to(device)))
    for i in range(1, L):
        assert torch.equal(hs[i], layer_out[i - 1]), i
    assert torch.equal(hs[L], ref.model.norm(layer_out[L - 1]))

    tensors = {k: v.clone() for k, v in batch.items()}
    tensors["logits"] = f32(out.logits)
    tensors["loss"] = f32(out.loss)
    tensors["inv_freq"] = loaded.model.rotary_emb.inv_freq.detach().double().contiguous()
    for i, h in enumerate(hs):
        tensors[f"hidden_states.{i}"] = f32(h)
    for i, h in enumerate(layer_out):
        tensors[f"layer_output.{i}"] = f32(h)
    grads64 = {}
    for n, p in ref.named_parameters():
        assert p.grad is not None, n
        grads64[n] = p.grad.detach().clone()
        tensors[f"grad.{n}"] = f32(p.grad)

    m32 = copy.deepcopy(loaded).to(device)
    m32.zero_grad(set_to_none=True)
    out32, _ = decoder_forward(m32, batch, device)
    out32.loss.backward()
    grad_dev = max(max_rel(p.grad, grads64[n]) for n, p in m32.named_parameters())

    # ---- greedy generation (float64 model, cross-checked against float32 and the cache) ----
    gens = []
    for text in GENERATE_INPUTS:
        ids, out_ids, margins = decoder_generate(ref, tok, text, eos_ids, device)
        _, out_ids32, _ = decoder_generate(loaded.to(device), tok, text, eos_ids, device)
        assert out_ids == out_ids32, (text, out_ids, out_ids32)
        assert min(margins) >= MIN_GENERATE_MARGIN, (name, text, margins)
        assert all(i < vocab_size for i in out_ids), (name, text, out_ids)
        gens.append({
            "input": text,
            "input_ids": ids,
            "output_ids": out_ids,
            "output_text": tok.decode(out_ids, skip_special_tokens=True),
            "min_top1_top2_logit_margin": round(min(margins), 6),
        })
    stops = [g["output_ids"][-1] in eos_ids for g in gens]
    assert any(stops) and not all(stops), (name, gens)
    loaded.to("cpu")

    meta = {
        "model": name,
        "description": "float64 reference computed from the float32 weights in model.safetensors; stored as float32",
        "config": {k: v for k, v in spec.items() if k != "seed"} | {
            "vocab_size": padded_vocab, "tokenizer_vocab_size": vocab_size, **decoder_common(spec)},
        "batch": {
            "examples": [{"source": s, "target": t} for s, t in BATCH_EXAMPLES],
            "batch_size": int(batch["input_ids"].shape[0]),
            "seq_len": int(batch["input_ids"].shape[1]),
            "pad_token_id": pad_id,
            "layout": "each row is source ids ++ target ids (tokenizer output, each ending with </s>), "
                      "right-padded; labels are transformers' unshifted labels (-100 on source and padding); "
                      f"{model_class.__name__} shifts them, so position t predicts labels[t + 1]",
            "loss": "CrossEntropy mean over all shifted label tokens != -100 in the whole batch",
        },
        "num_hidden_states": len(hs),
        "hidden_states_layout": "entry i (0..L-1) = input of layer i (entry 0 the token embedding); last entry = "
                                "model.norm(output of the last layer). The raw output of every layer is in "
                                "layer_output.{i}. Values at padded positions are included.",
        "inv_freq": "transformers' rotary inverse frequencies of one head (float32 values, stored as float64)",
        "parameter_names": param_names,
        "generate": gens,
        "generate_settings": {"do_sample": False, "num_beams": 1, "max_new_tokens": GENERATE_MAX_NEW_TOKENS,
                              "batch_size": 1, "eos_token_id": eos_ids,
                              "output_ids": "the new tokens only, ending with an eos id when generation stopped"},
        "float32_deviation": {
            "note": "max deviation of the same computation in float32 (torch CPU) from this float64 reference",
            "logits_max_abs": float((out32.logits.detach().double() - out.logits.detach()).abs().max()),
            "loss_abs": abs(out32.loss.item() - out.loss.item()),
            "grad_max_rel_to_tensor_max": grad_dev,
        },
        "stats": {"logits_std": out.logits.detach().std().item(), "loss": out.loss.item()},
    }
    save_tensors({k: v.contiguous() for k, v in tensors.items()}, os.path.join(model_dir, "reference.safetensors"))
    with open(os.path.join(model_dir, "reference.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    return meta


# --------------------------------------------------------------------------------------------
# SVD / projection
# --------------------------------------------------------------------------------------------


def fix_signs(u, v):
    """Deterministic sign convention: the largest-|.| entry of each column of U is positive."""
    if u.numel() == 0:
        return u, v
    idx = u.abs().argmax(dim=0)
    sign = torch.sign(u[idx, torch.arange(u.shape[1])])
    sign[sign == 0] = 1
    return u * sign, v * sign


def svd64(a32):
    u, s, vh = torch.linalg.svd(a32.double(), full_matrices=False)
    u, v = fix_signs(u, vh.transpose(0, 1))
    return u, s, v


def random_orthogonal(g, n, k):
    q, r = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def svd_matrix(name, g):
    kind, shape = name.rsplit("_", 1)
    m, n = map(int, shape.split("x"))
    r = min(m, n)
    if kind in ("random", "row", "col", "tall", "wide"):
        return torch.randn(m, n, generator=g)
    if kind == "rank_deficient":
        return (torch.randn(m, 5, generator=g, dtype=torch.float64)
                @ torch.randn(5, n, generator=g, dtype=torch.float64)).float()
    if kind == "zero":
        return torch.zeros(m, n)
    if kind == "clustered":
        sig = torch.ones(r, dtype=torch.float64)
        sig[r // 2:] += 1e-3 * torch.tensor([(-1.0) ** i for i in range(r - r // 2)], dtype=torch.float64)
        sig[: r // 4] = 2.0
    elif kind == "graded":
        sig = torch.logspace(0, -6, r, dtype=torch.float64)
    else:
        raise ValueError(name)
    u, v = random_orthogonal(g, m, r), random_orthogonal(g, n, r)
    return ((u * sig) @ v.T).float()


def make_svd_fixture(out_dir):
    g = torch.Generator().manual_seed(SEED + 30)
    tensors, info = {}, {}
    for name in SVD_CASES:
        a = svd_matrix(name, g).contiguous()
        u, s, v = svd64(a)
        recon = ((u * s) @ v.T - a.double()).abs().max().item()
        assert recon < 1e-5 * max(1.0, s.max().item()), (name, recon)
        tensors[f"{name}.a"] = a
        tensors[f"{name}.s"] = f32(s)
        tensors[f"{name}.u"] = f32(u)
        tensors[f"{name}.v"] = f32(v)
        gaps = (s[:-1] - s[1:]) / max(s[0].item(), 1e-30)
        info[name] = {
            "shape": list(a.shape),
            "s_max": round(float(s[0]), 6),
            "s_min": float(f"{float(s[-1]):.6g}"),
            # smallest gap between consecutive singular values relative to s_max: singular vectors
            # of nearly equal singular values are ill-conditioned; compare only subspaces there.
            "min_rel_gap": float(f"{float(gaps.min()):.6g}") if gaps.numel() else None,
        }
    meta = {"cases": info,
            "note": "NAME.a float32 [m,n]; float64 SVD of it stored float32: NAME.s [r] descending, NAME.u [m,r], "
                    "NAME.v [n,r], r=min(m,n), A = U diag(S) V^T; sign: largest-|.| entry of each U column > 0"}
    save_tensors(tensors, os.path.join(out_dir, "svd.safetensors"), metadata=meta)
    return info


def make_projection_fixture(out_dir):
    g = torch.Generator().manual_seed(SEED + 40)
    tensors, info = {}, {}
    for name, m, n, k in PROJECTION_CASES:
        # W has a random singular basis and a spectrum with a clear gap after the top k
        # (top k in [2, 4], rest in [0.1, 1.2]) so that the top-k subspaces are well conditioned.
        r = min(m, n)
        sig = torch.cat([torch.linspace(4.0, 2.0, k, dtype=torch.float64),
                         torch.linspace(1.2, 0.1, r - k, dtype=torch.float64)])
        w = ((random_orthogonal(g, m, r) * sig) @ random_orthogonal(g, n, r).T).float()
        d = torch.randn(m, n, generator=g)
        u, s, v = svd64(w)
        uk, vk = u[:, :k], v[:, :k]
        d64 = d.double()
        pu = torch.eye(m, dtype=torch.float64) - uk @ uk.T
        pv = torch.eye(n, dtype=torch.float64) - vk @ vk.T
        strict = pu @ d64 @ pv
        paper = d64 - uk @ (uk.T @ d64 @ vk) @ vk.T
        tensors.update({
            f"{name}.w": w, f"{name}.s": f32(s), f"{name}.u_k": f32(uk), f"{name}.v_k": f32(vk),
            f"{name}.delta": d, f"{name}.strict": f32(strict), f"{name}.paper": f32(paper),
        })
        info[name] = dict(m=m, n=n, k=k, gap=round(float(s[k - 1] - s[k]), 6))
    meta = {"cases": info,
            "note": "float64 math from the stored float32 w/delta, stored float32: strict = (I-UkUk^T) D (I-VkVk^T), "
                    "paper = D - Uk Uk^T D Vk Vk^T; NAME.s = all singular values of w"}
    save_tensors(tensors, os.path.join(out_dir, "projection.safetensors"), metadata=meta)
    return info


# --------------------------------------------------------------------------------------------
# check-checkpoint
# --------------------------------------------------------------------------------------------

ARCH_KEYS = ["vocab_size", "d_model", "d_kv", "num_heads", "d_ff", "num_layers", "num_decoder_layers",
             "relative_attention_num_buckets", "relative_attention_max_distance", "feed_forward_proj"]


def find_matching_fixture(ckpt_dir, fixtures_dir):
    cfg = json.load(open(os.path.join(ckpt_dir, "config.json")))
    cfg.setdefault("num_decoder_layers", cfg.get("num_layers"))
    for name in MODEL_SPECS:
        path = os.path.join(fixtures_dir, name, "config.json")
        if not os.path.exists(path):
            continue
        fcfg = json.load(open(path))
        if all(cfg.get(k) == fcfg.get(k) for k in ARCH_KEYS):
            return os.path.join(fixtures_dir, name, "reference.safetensors")
    raise SystemExit(f"no fixture in {fixtures_dir} matches the architecture of {ckpt_dir}; pass --reference")


def check_checkpoint(argv):
    p = argparse.ArgumentParser(prog="make_fixtures.py check-checkpoint",
                                description="Load a checkpoint with transformers and compare logits with a reference.")
    p.add_argument("dir")
    p.add_argument("--reference", help="safetensors with input_ids, attention_mask, decoder_input_ids, logits "
                                       "(default: reference.safetensors of the fixture with the same architecture)")
    p.add_argument("--fixtures", default=os.path.join("tests", "fixtures"))
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    patch_t5_layernorm_for_float64()
    ref_path = args.reference or find_matching_fixture(args.dir, args.fixtures)
    print(f"checkpoint: {args.dir}\nreference:  {ref_path}")
    ref = load_file(ref_path)
    for k in ("input_ids", "attention_mask", "decoder_input_ids", "logits"):
        if k not in ref:
            raise SystemExit(f"reference file lacks {k!r}")

    model, info = T5ForConditionalGeneration.from_pretrained(args.dir, output_loading_info=True)
    ok = True
    for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        if info.get(k):
            print(f"{k}: {sorted(map(str, info[k]))}")
            ok = False
    print(f"lm_head tied to shared: {heads_tied(model)}; scale_decoder_outputs: "
          f"{getattr(model.config, 'scale_decoder_outputs', None)}")
    model = model.to(device=args.device, dtype=torch.float64 if args.dtype == "float64" else torch.float32).eval()

    tok_file = os.path.join(args.dir, "tokenizer.json")
    if os.path.exists(tok_file):
        hf_tok = hf_tokenizer(tok_file)
        json_path = os.path.join(os.path.dirname(ref_path), "reference.json")
        if os.path.exists(json_path):
            for gen in json.load(open(json_path)).get("generate", []):
                ids = hf_tok(gen["input"]).input_ids
                if ids != gen["input_ids"]:
                    print(f"tokenizer mismatch for {gen['input']!r}: {ids} != {gen['input_ids']}")
                    ok = False
        print(f"tokenizer: {len(hf_tok)} tokens, pad={hf_tok.pad_token_id} eos={hf_tok.eos_token_id} "
              f"unk={hf_tok.unk_token_id}")
    else:
        print("tokenizer: no tokenizer.json in checkpoint")

    kwargs = {k: ref[k].to(args.device) for k in ("input_ids", "attention_mask", "decoder_input_ids")}
    if "labels" in ref:
        kwargs["labels"] = ref["labels"].to(args.device)
    with torch.no_grad():
        out = model(**kwargs)
    rel = max_rel(out.logits, ref["logits"])
    print(f"max |logits - ref| / max |ref| = {rel:.3e} (tol {args.tol:g})")
    if "labels" in ref and "loss" in ref:
        print(f"loss {float(out.loss):.7f} vs reference {float(ref['loss']):.7f}")
    if rel > args.tol:
        ok = False
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def describe(path):
    with safe_open(path, "pt") as f:
        parts = [f"{k}{list(f.get_slice(k).get_shape())}" for k in f.keys()]
    return f"{os.path.basename(path)}: " + " ".join(parts)


FIXTURES_README = """\
# Test fixtures (generated; do not edit by hand)

Regenerate with `pip install -r tools/requirements.txt && python tools/make_fixtures.py`
(deterministic; the CPU run is canonical). See the docstring of `tools/make_fixtures.py`.

- `tokenizer.json` - tiny Unigram tokenizer (0=<pad>, 1=</s>, 2=<unk>; Metaspace; appends </s>).
- `t5_v1_0/` - random T5 (relu FFN, lm_head tied to `shared`, decoder output scaled by d_model**-0.5).
- `t5_v1_1/` - random T5 v1.1 (gated-gelu FFN, separate `lm_head.weight`, no output scaling, 3 decoder layers).
  Each holds a Hugging Face folder (config.json, model.safetensors, tokenizer files) plus
  `reference.safetensors` / `reference.json`: float64 reference logits, loss, hidden states,
  gradients, a 3-step AdamW trajectory and greedy generations, stored as float32.
- `llama_gqa/` - random LlamaForCausalLM: grouped-query attention (4 query, 2 key/value heads),
  separate `lm_head.weight`, llama3 rope scaling, eos_token_id a list; transformers 5 config layout.
- `llama_tied/` - random LlamaForCausalLM: tied embeddings, 4 key/value heads, linear rope scaling,
  no pad_token_id (batches pad with eos); legacy `rope_theta` + `rope_scaling` config layout.
- `qwen2/` - random Qwen2ForCausalLM: q, k, v biases, tied embeddings, grouped-query attention.
- `qwen3/` - random Qwen3ForCausalLM: per-head q and k RMS norms, head_dim 16 (attention wider
  than the hidden size), separate `lm_head.weight`.
- `mistral/` - random MistralForCausalLM: a sliding window (48) longer than every sequence,
  grouped-query attention, separate `lm_head.weight`.
  Each decoder-only folder holds config.json, model.safetensors, tokenizer.json plus `reference.safetensors` /
  `reference.json`: float64 reference logits, loss, hidden states, every gradient, the rotary
  inverse frequencies and greedy generations. Regenerate only these with
  `python tools/make_fixtures.py --only llama_gqa,llama_tied,qwen2,qwen3,mistral`.
- `svd.safetensors` - `CASE.a/.s/.u/.v` matrices and their float64 SVD (A = U diag(S) V^T).
- `projection.safetensors` - `CASE.w/.s/.u_k/.v_k/.delta/.strict/.paper` projected updates.

Check a sculpt checkpoint against transformers:
`python tools/make_fixtures.py check-checkpoint DIR [--reference FILE]`.
"""


def generate(argv):
    p = argparse.ArgumentParser(prog="make_fixtures.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join("tests", "fixtures"))
    p.add_argument("--device", default="cpu", help="cpu (canonical) or cuda")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 keeps results reproducible)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--only", default="",
                   help="comma-separated fixtures to regenerate (e.g. llama_gqa,llama_tied); others are left as they are")
    args = p.parse_args(argv)
    only = set(filter(None, args.only.split(",")))
    known = set(MODEL_SPECS) | set(DECODER_SPECS) | {"tokenizer", "svd", "projection"}
    if only - known:
        p.error(f"--only: unknown fixtures {sorted(only - known)} (known: {sorted(known)})")

    def wanted(name):
        return not only or name in only

    torch.set_num_threads(args.threads)
    patch_t5_layernorm_for_float64()
    patch_decoders_for_float64()
    # on CUDA some kernels lack a deterministic variant: warn instead of failing there
    torch.use_deterministic_algorithms(True, warn_only=args.device != "cpu")
    seed_everything(SEED)
    os.makedirs(args.out, exist_ok=True)

    tok_path = os.path.join(args.out, "tokenizer.json")
    if wanted("tokenizer"):
        save_tokenizer(build_tokenizer(), tok_path)
    tok = Tokenizer.from_file(tok_path)
    hf_tok = hf_tokenizer(tok_path)
    for text in [s for s, _ in BATCH_EXAMPLES] + GENERATE_INPUTS:
        assert hf_tok(text).input_ids == tok.encode(text).ids, text

    metas, decoder_metas = {}, {}
    for name, spec in MODEL_SPECS.items():
        if wanted(name):
            seed_everything(spec["seed"])
            metas[name] = make_model_fixture(name, spec, tok, tok_path, args.out, args.device)
    for name, spec in DECODER_SPECS.items():
        if wanted(name):
            seed_everything(spec["seed"])
            decoder_metas[name] = make_decoder_fixture(name, spec, tok, tok_path, args.out, args.device)
    svd_info = make_svd_fixture(args.out) if wanted("svd") else "kept"
    proj_info = make_projection_fixture(args.out) if wanted("projection") else "kept"
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write(FIXTURES_README)

    if not args.quiet:
        print(f"tokenizer: {tok.get_vocab_size()} tokens")
        for text in GENERATE_INPUTS + [s for s, _ in BATCH_EXAMPLES]:
            e = tok.encode(text)
            print(f"  {text!r} -> {e.ids} {e.tokens}")
        for name, meta in metas.items():
            print(f"{name}: loss={meta['stats']['loss']:.5f} logits_std={meta['stats']['logits_std']:.3f} "
                  f"adamw losses={meta['adamw']['loss_per_step']} norms={meta['adamw']['grad_norm_per_step']}")
            print(f"  float32 deviation: {meta['float32_deviation']}")
            for gen in meta["generate"]:
                print(f"  generate {gen['input']!r} -> {gen['output_ids']} {gen['output_text']!r} "
                      f"(min margin {gen['min_top1_top2_logit_margin']})")
        for name, meta in decoder_metas.items():
            print(f"{name}: loss={meta['stats']['loss']:.5f} logits_std={meta['stats']['logits_std']:.3f}")
            print(f"  float32 deviation: {meta['float32_deviation']}")
            for gen in meta["generate"]:
                print(f"  generate {gen['input']!r} -> {gen['output_ids']} {gen['output_text']!r} "
                      f"(min margin {gen['min_top1_top2_logit_margin']})")
        print("svd:", svd_info)
        print("projection:", proj_info)
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "check-checkpoint":
        return check_checkpoint(argv[1:])
    return generate(argv)


if __name__ == "__main__":
    sys.exit(main())
