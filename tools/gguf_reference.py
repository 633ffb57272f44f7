#!/usr/bin/env python3
"""Check `sculpt import --gguf` against transformers' own GGUF conversion.

    python tools/gguf_reference.py --gguf FILE.gguf --out DIR [--sculpt target/release/sculpt]

Runs ``sculpt import --gguf FILE --out DIR --overwrite``, converts the same file with transformers
(``from_pretrained(..., gguf_file=...)``, which dequantises to float32), then checks:

* every tensor: max |sculpt - transformers| / max |transformers| <= 1e-6, same names and shapes;
* config fields (sizes, heads, eps, rope theta, context, vocabulary, tying, special ids);
* token ids of a varied text (prose, code, numbers, unicode, whitespace runs, emoji; >= 1,000
  words), line by line and whole, and the chat template's output;
* that transformers loads sculpt's folder (AutoModelForCausalLM + AutoTokenizer) and that its
  logits on a prompt match the reference model's;
* where the file holds ``rope_freqs.weight`` (Llama 3.1 rope scaling, which transformers'
  conversion ignores), that sculpt's rope_scaling reproduces it; the reference then uses it too.

Needs torch, transformers, gguf. Prints a summary; exits 1 on any mismatch.
"""

import argparse
import json
import math
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

TENSOR_TOLERANCE = 1e-6
LOGITS_TOLERANCE = 1e-4

PROSE = """\
The lighthouse keeper had not spoken to anyone in eleven days, which suited him well enough.
Each morning he climbed the hundred and twelve steps, wiped the salt from the great lens, and
wrote three lines in the logbook: the wind, the sea, and whatever ship had passed in the night.
On the twelfth day a small boat appeared on the horizon, rowing steadily against the tide.
"You're late," he said when the stranger finally reached the jetty. "The supply boat came Tuesday."
She laughed. "I'm not the supply boat. I'm the new assistant, though nobody told you, did they?"
It's strange how quickly a routine becomes a fortress; it wasn't until that evening -- over tea,
bread, and a tin of sardines they'd shared without much ceremony -- that he realised he'd missed
the sound of another voice. They'll argue about the weather tomorrow, and they'd both say they
won. Doesn't matter. What's a lighthouse for, if not for being seen?
Machine learning models are trained on large collections of text, and the way that text is cut
into tokens shapes everything the model later learns. A tokenizer that splits numbers digit by
digit sees 2024 very differently from one that keeps it whole; a tokenizer that respects leading
spaces learns that " the" and "the" are different things. Continual fine-tuning adds a further
twist: every new task arrives with its own vocabulary of habits, and the model must absorb it
without forgetting the old ones. Orthogonal subspace methods freeze the directions that matter
most for earlier tasks and let the update move only in the remaining space.
"""

CODE = '''\
def fibonacci(n: int) -> list[int]:
    """Return the first n Fibonacci numbers."""
    a, b = 0, 1
    out = []
    for _ in range(n):
        out.append(a)
        a, b = b, a + b
    return out

if __name__ == "__main__":
    print(fibonacci(10))  # [0, 1, 1, 2, 3, 5, 8, 13, 21, 34]

fn main() {
    let xs: Vec<u64> = (1..=10).map(|x| x * x).collect();
    println!("{:?} sum={}", xs, xs.iter().sum::<u64>());
}

SELECT name, COUNT(*) AS n FROM users WHERE created_at >= '2024-01-01' GROUP BY name HAVING n > 3;
const re = /^([a-z0-9_\\.-]+)@([\\da-z\\.-]+)\\.([a-z\\.]{2,6})$/;
<div class="card" data-id="42"><span>&lt;hello&gt; &amp; goodbye</span></div>
'''

NUMBERS = """\
Pi is 3.14159265358979, e is 2.718281828, and the speed of light is 299,792,458 m/s.
Invoice #INV-2024-00731: 17 items x $12.99 = $220.83 (tax 8.25% -> $18.22); total $239.05.
Call +1 (555) 010-9999 or +44 20 7946 0958 before 23:59 on 31/12/2025; version 1.2.3-rc.4.
Coordinates: 48.8584 N, 2.2945 E; altitude -12.5 m; ratio 1:1000000; 0x1F3A 0b101101 1e-7 6.02e23.
"""

UNICODE = """\
Français : « Où est la bibliothèque ? » — Deutsch: Straße, Größe, Übermaß. Español: ¿Qué tal? ¡Olé!
Русский: Привет, как дела? Ελληνικά: Καλημέρα κόσμε. العربية: مرحبا بالعالم. עברית: שלום עולם.
中文：你好，世界！今天天气很好。日本語：こんにちは、世界。カタカナとひらがな。한국어: 안녕하세요 세계.
हिन्दी: नमस्ते दुनिया। ไทย: สวัสดีชาวโลก. Tiếng Việt: Xin chào thế giới. Math: ∀x∈ℝ, x²≥0; ∑ᵢ aᵢ ≤ ∞; √2 ≈ 1.414.
Emoji: 😀 🎉 👩‍💻 🧑🏽‍🚀 🇫🇷 ❤️ 👍🏻 🐍🦀 — combined: 👨‍👩‍👧‍👦 and keycaps 1️⃣ #️⃣.
"""

WHITESPACE = "tabs\there\t\tand\t\t\tthere\nspaces  two   three    four     five\n\n\nblank lines above\r\nwindows line\r\n   leading and trailing   \n"

SPECIAL = "<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\nHello! <|endoftext|>"


def varied_text():
    """Prose, code, numbers, unicode, whitespace runs and emoji, plus generated sentences with
    varied words and numbers so the whole has well over 1,000 words."""
    subjects = ["The engineer", "A small cat", "Our committee", "Every student", "The old river", "This algorithm"]
    verbs = ["measured", "ignored", "rebuilt", "celebrated", "questioned", "compressed"]
    objects = ["the quarterly report", "a broken violin", "thirty-seven lanterns", "the unusual sunrise",
               "the gradient", "seven hundred photographs"]
    generated = []
    for i in range(96):
        s, v, o = subjects[i % 6], verbs[(i * 5) % 6], objects[(i * 7 + i // 6) % 6]
        generated.append(f"{s} {v} {o} on day {i * 37 % 365} at {i % 24:02d}:{i * 13 % 60:02d}, costing {i * 1.75:.2f} units.")
    return "\n".join([PROSE, CODE, NUMBERS, UNICODE, WHITESPACE, SPECIAL, " ".join(generated)])


def llama3_rope_divisors(path):
    """llama.cpp's rope_freqs.weight (per-frequency divisors), or None."""
    from gguf import GGUFReader

    for tensor in GGUFReader(path).tensors:
        if tensor.name == "rope_freqs.weight":
            return torch.tensor(tensor.data, dtype=torch.float64)
    return None


def relative_diff(a, b):
    scale = b.abs().max().item()
    diff = (a - b).abs().max().item()
    return diff / scale if scale > 0 else diff


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", required=True)
    parser.add_argument("--out", required=True, help="folder sculpt import writes (replaced)")
    parser.add_argument("--sculpt", default="target/release/sculpt", help="the sculpt binary")
    args = parser.parse_args()
    failures = []

    def check(ok, message):
        print(("ok    " if ok else "FAIL  ") + message)
        if not ok:
            failures.append(message)

    command = [args.sculpt, "import", "--gguf", args.gguf, "--out", args.out, "--overwrite"]
    print("$ " + " ".join(command))
    subprocess.run(command, check=True)

    folder, name = os.path.dirname(os.path.abspath(args.gguf)), os.path.basename(args.gguf)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # save_pretrained refuses GGUF-loaded models: rebuild a plain model from the config and
    # load the dequantised state dict into it.
    ref_config = gguf_model.config
    del ref_config.quantization_config
    ours_config = AutoConfig.from_pretrained(args.out)
    rope_divisors = llama3_rope_divisors(args.gguf)
    if rope_divisors is not None:
        # transformers ignores llama.cpp's rope_freqs.weight (Llama 3.1 rope scaling); sculpt
        # turns it into rope_scaling. Check that scaling against the tensor, and give the
        # reference the same rope so that the logits compare the weights.
        head_dim = ours_config.head_dim
        theta = ours_config.rope_parameters["rope_theta"]
        base = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        ours_inv_freq = AutoModelForCausalLM.from_config(ours_config).model.rotary_emb.inv_freq.double()
        d = relative_diff(ours_inv_freq, base / rope_divisors)
        check(d <= 1e-6, f"rope: sculpt's rope_scaling gives the inverse frequencies of rope_freqs.weight "
              f"(max relative diff {d:.3e})")
        ref_config.rope_parameters = ours_config.rope_parameters
    reference = LlamaForCausalLM(ref_config)
    missing, unexpected = reference.load_state_dict(gguf_model.state_dict(), strict=False)
    check(not missing and not unexpected, f"reference rebuilt (missing {missing}, unexpected {unexpected})")
    reference.eval()
    ref_state = reference.state_dict()
    del gguf_model

    # Tensors.
    ours = load_file(os.path.join(args.out, "model.safetensors"))
    expected = {k for k in ref_state if not (ref_config.tie_word_embeddings and k == "lm_head.weight")}
    check(set(ours) == expected, f"tensor names: {len(ours)} in sculpt's file, {len(expected)} expected "
          f"(only sculpt: {sorted(set(ours) - expected)[:5]}, only transformers: {sorted(expected - set(ours))[:5]})")
    worst, worst_name = 0.0, None
    for key in sorted(expected & set(ours)):
        if ours[key].shape != ref_state[key].shape:
            check(False, f"{key}: shape {tuple(ours[key].shape)} vs {tuple(ref_state[key].shape)}")
            continue
        d = relative_diff(ours[key].float(), ref_state[key].float())
        if d > worst or worst_name is None:
            worst, worst_name = d, key
    check(worst <= TENSOR_TOLERANCE, f"tensors: max relative diff {worst:.3e} ({worst_name}) over {len(expected)} tensors")

    # Config.
    for field in ["model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "max_position_embeddings", "vocab_size", "tie_word_embeddings",
                  "bos_token_id", "eos_token_id", "pad_token_id"]:
        a, b = getattr(ours_config, field, None), getattr(ref_config, field, None)
        check(a == b, f"config {field}: sculpt {a!r}, transformers {b!r}")
    for field in ["rms_norm_eps", "rope_theta"]:
        a = getattr(ours_config, field, None) or (ours_config.rope_parameters or {}).get(field)
        b = getattr(ref_config, field, None) or (ref_config.rope_parameters or {}).get(field)
        check(a is not None and b is not None and math.isclose(a, b, rel_tol=1e-6),
              f"config {field}: sculpt {a!r}, transformers {b!r}")

    # Tokenizer.
    ref_tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    ours_tok = AutoTokenizer.from_pretrained(args.out)
    text = varied_text()
    words = len(text.split())
    lines = [line for line in text.split("\n")]
    agree = sum(ref_tok.encode(line) == ours_tok.encode(line) for line in lines)
    check(agree == len(lines), f"tokenizer: {agree}/{len(lines)} lines give equal ids")
    ref_ids, ours_ids = ref_tok.encode(text), ours_tok.encode(text)
    check(ref_ids == ours_ids, f"tokenizer: whole text ({words} words, {len(ref_ids)} tokens) gives equal ids")
    check(ours_tok.decode(ours_ids) == ref_tok.decode(ref_ids), "tokenizer: decoding agrees")
    for attr in ["bos_token", "eos_token", "pad_token", "unk_token"]:
        a, b = getattr(ours_tok, attr), getattr(ref_tok, attr)
        check(a == b, f"tokenizer {attr}: sculpt {a!r}, transformers {b!r}")
    if ref_tok.chat_template is None:
        check(ours_tok.chat_template is None, "no chat template in the file, none in sculpt's folder")
        prompt_text = "The lighthouse keeper climbed the steps"
    else:
        messages = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]
        prompt_text = ours_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        b = ref_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        check(prompt_text == b, "chat template renders the same conversation identically")

    # transformers loads sculpt's folder and computes the same logits.
    ours_model = AutoModelForCausalLM.from_pretrained(args.out, dtype=torch.float32).eval()
    prompt = torch.tensor([ref_tok.encode(prompt_text)])
    with torch.no_grad():
        ours_logits, ref_logits = ours_model(prompt).logits, reference(prompt).logits
    d = relative_diff(ours_logits, ref_logits)
    check(d <= LOGITS_TOLERANCE, f"logits of sculpt's folder in transformers: max relative diff {d:.3e} "
          f"over {prompt.shape[1]} tokens; same argmax: {bool((ours_logits.argmax(-1) == ref_logits.argmax(-1)).all())}")

    print(json.dumps({"tensor_max_relative_diff": worst, "tensors": len(expected), "words": words,
                      "tokens": len(ref_ids), "lines_agreeing": agree, "lines": len(lines),
                      "logits_max_relative_diff": d, "failures": len(failures)}))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
