"""An independent whole-run reference for sculpt's continual runs (OSFT and SeqFT), in
PyTorch/transformers, the way the official OSFT code trains (Red-Hat-AI-Innovation-Team/
orthogonal-subspace-learning; Nayak et al. 2025, "Sculpting Subspaces").

What follows the official code (and sculpt's `--recipe paper-llama --rank-policy official`):
- At the start of every task (the first included) every target matrix W (m x n) of the decoder
  (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj) is decomposed, W = U S V^T
  (float32, thin SVD), and its top k singular directions are frozen.
- k by the official adaptive rule (`auto_generate_target_svd_config`): the importance I(W) is
  the mean over real tokens of the cosine between the first d = min(m, n) features of the
  matrix's input x and of its output W x, with x captured (forward hooks) on the first
  `--importance-samples` training examples of the PREVIOUS task (the first task: its own),
  teacher-forced on prompt + answer; I_n = I / (mean over targets + 1e-8);
  k = round(d/2 + I_n (d - d/2)) (Python's round), clamped to [1, d]. `--rank-policy fixed`:
  k = floor(ratio d).
- AdamW with torch's formula (betas, eps, decoupled weight decay), a fresh state per task,
  constant rate, no clipping, no warmup; non-target parameters train freely.
- Loss: cross-entropy over the answer tokens only, mean over the batch's answer tokens.
- Evaluation after every task on every task: greedy decoding from the prompt of at most
  len(answer ids) + 2 tokens, stopping at EOS; the decoded text (special tokens skipped),
  stripped, must equal the target stripped. R[i][j], AA = mean of the last row,
  BWT = mean over j < T-1 of R[T-1][j] - R[j][j].

The one deliberate difference from the official code: the official code re-parameterises each
target as frozen factors U_high S_high V_high^T plus trainable U_low, S_low, V_low (and
projects the factors' gradients); here, as in sculpt's default `strict` projection, the dense
W is trained and both its gradient and AdamW's whole update (weight decay included) are
projected, G <- (I - U_k U_k^T) G (I - V_k V_k^T), so that W never moves in the frozen span.
The AdamW step is therefore written out (torch.optim.AdamW cannot project its update):
  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  m^ = m/(1-b1^t);  v^ = v/(1-b2^t)
  update = lr (m^/(sqrt(v^)+eps) + wd W);  W -= P(update) (targets), W -= update (others).
SeqFT is the same loop without any projection.

Tokenization follows sculpt's plain-example path (src/train.rs `encode_example`,
src/model/llama/mod.rs `CausalBatch::new`): source and target are tokenized separately with the
tokenizer's added special tokens (tokenizer.json's post-processor; the tiny model's appends
</s>), concatenated, right-padded with pad_token_id; labels are the target ids only.
Sources / targets longer than --max-source-len / --max-target-len are cut keeping their last
token. The data order is this script's own (torch.Generator seeded by the seed and the task),
so the comparison with sculpt is over seeds; `--sculpt-order` instead draws sculpt's order
(its SplitMix64 generator, src/rng.rs), and `--compare --matched` then checks the two runs
step by step (loss of every step, the accuracy matrices, k of every matrix at every task).

Exact commands used (issue #20, item 3; the tiny model, the stream, both sides, the table):

    python tools/osft_reference.py --make-stream /work/main/data/real-stream/stream.json \\
        --out /work/tmp/ref-stream
    python tools/osft_reference.py --make-model /work/tmp/ref-model \\
        --stream /work/tmp/ref-stream/stream.json
    python tools/osft_reference.py --model /work/tmp/ref-model \\
        --stream /work/tmp/ref-stream/stream.json --method both --rank-policy official \\
        --importance-samples 128 --lr 1e-3 --epochs 8 --batch-size 8 --weight-decay 0.01 \\
        --seeds 0,1,2 --out /work/tmp/ref-runs/reference
    XDG_RUNTIME_DIR=/tmp RUST_LOG=info sculpt train --model /work/tmp/ref-model \\
        --stream /work/tmp/ref-stream/stream.json --method both --recipe paper-llama \\
        --rank-policy official --importance-samples 128 --lr 1e-3 --epochs 8 --batch-size 8 \\
        --weight-decay 0.01 --max-grad-norm 0 --max-source-len 128 --max-target-len 16 \\
        --seeds 0,1,2 --out /work/tmp/ref-runs/sculpt
    # the same, drawing the data order as sculpt does (a step-by-step comparison):
    python tools/osft_reference.py --model /work/tmp/ref-model \\
        --stream /work/tmp/ref-stream/stream.json --method both --rank-policy official \\
        --importance-samples 128 --lr 1e-3 --epochs 8 --batch-size 8 --weight-decay 0.01 \\
        --seeds 0,1,2 --sculpt-order --out /work/tmp/ref-runs/reference-sculpt-order
    python tools/osft_reference.py --compare /work/tmp/ref-runs/sculpt \\
        --out /work/tmp/ref-runs/reference \\
        --matched /work/tmp/ref-runs/reference-sculpt-order --sculpt-log /work/tmp/ref-runs/sculpt.log
    # the deterministic rank check (task 1: same weights, same samples):
    python tools/osft_reference.py --ranks-only --model /work/tmp/ref-model \\
        --stream /work/tmp/ref-stream/stream.json --importance-samples 128

Needs torch, transformers, tokenizers, safetensors (tools/requirements.txt). CPU only;
one thread (torch.set_num_threads(1)) unless --threads says otherwise.
"""

import argparse
import json
import math
import random
import re
import statistics
import time
from pathlib import Path

import torch

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# --make-stream: the tasks kept from data/real-stream and their short instructions.
STREAM_TASKS = [
    ("news_topic", "Topic of the news:"),
    ("sms_spam", "Is this message spam:"),
    ("question_type", "Type of answer asked:"),
    ("tweet_author", "Author of the tweet:"),
]


# ----------------------------------------------------------------------------- data


def make_stream(source_stream, out_dir, n_train=200, n_eval=50, words=40):
    """Plain JSONL tasks {"input", "target"} from the chat stream, with short instructions."""
    src = Path(source_stream)
    spec = json.loads(src.read_text())
    by_name = {t["name"]: t for t in spec["tasks"]}
    out = Path(out_dir)
    tasks = []
    for name, instruction in STREAM_TASKS:
        t = by_name[name]
        (out / name).mkdir(parents=True, exist_ok=True)
        for split, n in (("train", n_train), ("eval", n_eval)):
            rows = [json.loads(l) for l in (src.parent / t[split]).read_text().splitlines() if l.strip()][:n]
            with open(out / name / f"{split}.jsonl", "w") as f:
                for r in rows:
                    user, answer = r["messages"][0]["content"], r["messages"][1]["content"]
                    text = user.split("\n\n", 1)[1]
                    text = " ".join(text.split()[:words])
                    f.write(json.dumps({"input": f"{instruction} {text}", "target": answer}) + "\n")
        tasks.append({"name": name, "train": f"{name}/train.jsonl", "eval": f"{name}/eval.jsonl",
                      "labels": t["labels"]})
    (out / "stream.json").write_text(json.dumps({"tasks": tasks}, indent=1) + "\n")
    print(f"wrote {out / 'stream.json'}: {[t['name'] for t in tasks]}")


def load_stream(path):
    """The tasks of a sculpt stream file (jsonl format; instruction, max_train/max_eval and the
    per-task epochs / lr / batch_size overrides are honoured)."""
    path = Path(path)
    spec = json.loads(path.read_text())
    tasks = []
    for t in spec["tasks"]:
        if t.get("format", "jsonl") != "jsonl":
            raise SystemExit(f"task {t['name']}: only the jsonl format is supported here")
        labels = t.get("labels")

        def read(rel, limit):
            rows = [json.loads(l) for l in (path.parent / rel).read_text().splitlines() if l.strip()]
            rows = rows[:limit] if limit else rows
            out = []
            for r in rows:
                src = r["input"]
                if t.get("instruction"):
                    src = (t["instruction"].replace("{{", "\0").replace("}}", "\1")
                           .replace("{labels}", ", ".join(labels or []))
                           .replace("{input}", r["input"]).replace("\0", "{").replace("\1", "}"))
                out.append((src, r["target"]))
            return out

        tasks.append({"name": t["name"], "train": read(t["train"], t.get("max_train")),
                      "eval": read(t["eval"], t.get("max_eval")),
                      "epochs": t.get("epochs"), "lr": t.get("lr"), "batch_size": t.get("batch_size")})
    return tasks


# ----------------------------------------------------------------------------- model


def make_model(model_dir, stream, vocab_size=1500, seed=1234):
    """A tiny random Llama with its own byte-level BPE tokenizer, trained on the stream's texts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM

    tasks = load_stream(stream)
    texts = [s for t in tasks for s, _ in t["train"]] + [a for t in tasks for _, a in t["train"]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    pad, bos, eos = (tok.token_to_id(t) for t in ("<pad>", "<s>", "</s>"))
    # As T5's tokenizer (and sculpt's plain path expects): every encoding ends with </s>.
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", eos)])
    out = Path(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, rms_norm_eps=1e-6, tie_word_embeddings=False,
                         pad_token_id=pad, bos_token_id=bos, eos_token_id=eos, initializer_range=0.02)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    tok.save(str(out / "tokenizer.json"))
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {out}: vocab {tok.get_vocab_size()}, {n} parameters (pad {pad}, bos {bos}, eos {eos})")


def load(model_dir):
    from tokenizers import Tokenizer
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    tok = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    return model, tok


class SculptRng:
    """sculpt's src/rng.rs (SplitMix64), for --sculpt-order."""
    MASK = (1 << 64) - 1
    GOLDEN = 0x9E3779B97F4A7C15

    def __init__(self, seed):
        self.state = (seed ^ self.GOLDEN) & self.MASK

    def next_u64(self):
        self.state = (self.state + self.GOLDEN) & self.MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & self.MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & self.MASK
        return z ^ (z >> 31)

    def shuffle(self, items):
        for i in range(len(items) - 1, 0, -1):
            j = self.next_u64() % (i + 1)
            items[i], items[j] = items[j], items[i]


def truncate(ids, limit):
    """sculpt's truncate: cut to `limit`, keeping the last (end) token."""
    if len(ids) > limit:
        last = ids[-1]
        ids = ids[:max(limit, 1)]
        ids[-1] = last
    return ids


def encode(tok, examples, max_src, max_tgt):
    return [(truncate(tok.encode(s).ids, max_src), truncate(tok.encode(t).ids, max_tgt)) for s, t in examples]


def batch(pairs, pad_id):
    """CausalBatch::new: concatenated, right-padded, labels on the target ids only."""
    seq = max(len(s) + len(t) for s, t in pairs)
    ids = torch.full((len(pairs), seq), pad_id, dtype=torch.long)
    mask = torch.zeros((len(pairs), seq), dtype=torch.long)
    labels = torch.full((len(pairs), seq), -100, dtype=torch.long)
    for b, (s, t) in enumerate(pairs):
        n = len(s) + len(t)
        ids[b, :n] = torch.tensor(s + t)
        mask[b, :n] = 1
        labels[b, len(s):n] = torch.tensor(t)  # predicted from the position before
    return ids, mask, labels


def loss_of(model, pairs, pad_id):
    ids, mask, labels = batch(pairs, pad_id)
    logits = model(input_ids=ids, attention_mask=mask).logits
    # Position t predicts token t + 1; mean over the batch's answer tokens.
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                             labels[:, 1:].reshape(-1), ignore_index=-100, reduction="mean")


def target_modules(model):
    return {f"{name}.weight": mod for name, mod in model.named_modules()
            if isinstance(mod, torch.nn.Linear) and name.split(".")[-1] in TARGETS}


# ----------------------------------------------------------------------------- OSFT


@torch.no_grad()
def matrix_importance(model, pairs, batch_size, pad_id):
    """Official rule's raw importance of every target: mean cosine over real tokens between the
    first d input features and the first d output features (norms + 1e-8, as the official code)."""
    mods = target_modules(model)
    sums = {n: [0.0, 0] for n in mods}
    current = {}
    hooks = []
    for name, mod in mods.items():
        def hook(m, inputs, output, name=name):
            x = inputs[0][current["mask"]].double()  # (real tokens, n)
            w = m.weight.double()
            d = min(w.shape)
            y = x @ w[:d].T
            xs = x[:, :d]
            xn = xs / (xs.norm(dim=1, keepdim=True) + 1e-8)
            yn = y / (y.norm(dim=1, keepdim=True) + 1e-8)
            sums[name][0] += (xn * yn).sum().item()
            sums[name][1] += x.shape[0]
        hooks.append(mod.register_forward_hook(hook))
    try:
        for i in range(0, len(pairs), batch_size):
            ids, mask, _ = batch(pairs[i:i + batch_size], pad_id)
            current["mask"] = mask.bool()
            model(input_ids=ids, attention_mask=mask)
    finally:
        for h in hooks:
            h.remove()
    return {n: s / max(c, 1) for n, (s, c) in sums.items()}


def frozen_rank(policy, ratio, importance, m, n):
    d = min(m, n)
    if policy == "fixed":
        return min(int(math.floor(ratio * d + 1e-9)), d)
    low, high = 0.5 * d, 1.0 * d
    return max(1, min(int(round(low + importance * (high - low))), d))


@torch.no_grad()
def build_subspaces(model, policy, ratio, importance_pairs, batch_size, pad_id):
    """{name: (left projector, right projector, k)} and the rank choices."""
    mods = target_modules(model)
    norm = {}
    if policy == "official":
        raw = matrix_importance(model, importance_pairs, batch_size, pad_id)
        mean = sum(raw.values()) / len(raw)
        norm = {n: v / (mean + 1e-8) for n, v in raw.items()}
    projectors, choices = {}, []
    for name, mod in mods.items():
        w = mod.weight.detach().float()
        m, n = w.shape
        k = frozen_rank(policy, ratio, norm.get(name, 0.0), m, n)
        u, _, vh = torch.linalg.svd(w, full_matrices=False)
        uk, vk = u[:, :k], vh[:k].T
        projectors[name] = (torch.eye(m) - uk @ uk.T, torch.eye(n) - vk @ vk.T, k)
        choices.append({"name": name, "rows": m, "cols": n, "importance": norm.get(name, 0.0), "k": k})
    return projectors, choices


class ProjectedAdamW:
    """torch.optim.AdamW's formula, with the gradient and the whole update of the target
    matrices projected out of their frozen subspaces."""

    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, projectors=None):
        self.params = params  # {name: parameter}
        self.lr, (self.b1, self.b2), self.eps, self.wd = lr, betas, eps, weight_decay
        self.projectors = projectors or {}
        self.t = 0
        self.m = {n: torch.zeros_like(p) for n, p in params.items()}
        self.v = {n: torch.zeros_like(p) for n, p in params.items()}

    @torch.no_grad()
    def step(self):
        self.t += 1
        bc1, bc2 = 1 - self.b1 ** self.t, 1 - self.b2 ** self.t
        for name, p in self.params.items():
            if p.grad is None:
                continue
            g = p.grad
            proj = self.projectors.get(name)
            if proj is not None:
                g = proj[0] @ g @ proj[1]
            self.m[name].mul_(self.b1).add_(g, alpha=1 - self.b1)
            self.v[name].mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
            denom = (self.v[name] / bc2).sqrt() + self.eps
            update = self.lr * ((self.m[name] / bc1) / denom + self.wd * p)
            if proj is not None:
                update = proj[0] @ update @ proj[1]
            p.sub_(update)


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def greedy(model, source, max_new, eos_id):
    out = []
    ids = torch.tensor([source])
    past = None
    for _ in range(max_new):
        o = model(input_ids=ids, past_key_values=past, use_cache=True)
        past = o.past_key_values
        token = int(o.logits[0, -1].argmax())
        out.append(token)
        if token == eos_id:
            break
        ids = torch.tensor([[token]])
    return out


def exact_match(model, tok, examples, max_src, eos_id):
    hits = 0
    for s, t in examples:
        src = truncate(tok.encode(s).ids, max_src)
        target = tok.encode(t).ids
        text = tok.decode(greedy(model, src, len(target) + 2, eos_id), skip_special_tokens=True)
        hits += int(text.strip() == t.strip())
    return hits / max(len(examples), 1)


def metrics(r):
    t = len(r)
    aa = sum(r[-1]) / t
    bwt = sum(r[-1][j] - r[j][j] for j in range(t - 1)) / (t - 1) if t > 1 else 0.0
    forgetting = [max(r[i][j] for i in range(t - 1)) - r[-1][j] for j in range(t - 1)]
    return aa, bwt, forgetting


# ----------------------------------------------------------------------------- the run


def run(args, method, seed, out_dir):
    model, tok = load(args.model)
    model.train()  # no dropout in Llama; kept as the official loop
    cfg = model.config
    pad_id = cfg.pad_token_id if cfg.pad_token_id is not None else cfg.eos_token_id
    eos_id = cfg.eos_token_id
    tasks = load_stream(args.stream)
    params = dict(model.named_parameters())
    def evaluate_all():
        model.eval()
        row = [exact_match(model, tok, t["eval"], args.max_source_len, eos_id) for t in tasks]
        model.train()
        return row

    before = evaluate_all()
    run_rng = SculptRng(seed)
    accuracy, log, ranks = [], [], []
    t0 = time.time()
    for i, task in enumerate(tasks):
        epochs = task["epochs"] or args.epochs
        bs = task["batch_size"] or args.batch_size
        lr = task["lr"] or args.lr
        projectors = {}
        if method == "osft":
            prev = tasks[max(i - 1, 0)]
            prev_bs = prev["batch_size"] or args.batch_size
            samples = encode(tok, prev["train"][:args.importance_samples], args.max_source_len, args.max_target_len)
            projectors, choices = build_subspaces(model, args.rank_policy, args.rank_ratio, samples, prev_bs, pad_id)
            ranks.append({"task": task["name"], "choices": choices})
        opt = ProjectedAdamW(params, lr, (args.beta1, args.beta2), args.eps, args.weight_decay, projectors)
        pairs = encode(tok, task["train"], args.max_source_len, args.max_target_len)
        gen = torch.Generator().manual_seed(seed * 1000 + i)
        # --sculpt-order: sculpt's draw (src/continual/driver.rs, src/train.rs): a task's
        # generator from the run's, each epoch's order shuffled by a copy of it, then one draw.
        position = SculptRng(0)
        position.state = SculptRng(run_rng.next_u64()).state if args.sculpt_order else 0
        for epoch in range(epochs):
            if args.sculpt_order:
                order = list(range(len(pairs)))
                copy = SculptRng(0)
                copy.state = position.state
                copy.shuffle(order)
                position.next_u64()
            else:
                order = torch.randperm(len(pairs), generator=gen).tolist()
            for b in range(0, len(order), bs):
                chunk = [pairs[j] for j in order[b:b + bs]]
                for p in params.values():
                    p.grad = None
                loss = loss_of(model, chunk, pad_id)
                loss.backward()
                opt.step()
                log.append({"task": task["name"], "epoch": epoch, "step": opt.t, "loss": loss.item()})
        row = evaluate_all()
        accuracy.append(row)
        print(f"  seed {seed} {method} after {task['name']}: loss {log[-1]['loss']:.3f}, "
              f"accuracy {[round(100 * a, 1) for a in row]} ({time.time() - t0:.0f}s)", flush=True)
    aa, bwt, forgetting = metrics(accuracy)
    results = {"method": method, "tasks": [t["name"] for t in tasks], "accuracy": accuracy, "before": before,
               "aa": aa, "bwt": bwt,
               "fwt": sum(accuracy[j - 1][j] - before[j] for j in range(1, len(tasks))) / max(len(tasks) - 1, 1),
               "forgetting": forgetting, "wall_s": time.time() - t0,
               "settings": {k: v for k, v in vars(args).items() if not callable(v)}}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out_dir / "ranks.json").write_text(json.dumps(ranks, indent=1) + "\n")
    (out_dir / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    return results


def ranks_only(args):
    """k per target at the first task (initial weights, the first task's own samples)."""
    model, tok = load(args.model)
    cfg = model.config
    pad_id = cfg.pad_token_id if cfg.pad_token_id is not None else cfg.eos_token_id
    task = load_stream(args.stream)[0]
    samples = encode(tok, task["train"][:args.importance_samples], args.max_source_len, args.max_target_len)
    _, choices = build_subspaces(model, args.rank_policy, args.rank_ratio, samples,
                                 task["batch_size"] or args.batch_size, pad_id)
    for c in choices:
        print(f"subspace {c['name']} {c['rows']}x{c['cols']}: importance {c['importance']:.3f}, k = {c['k']}")


# ----------------------------------------------------------------------------- comparison


def compare(sculpt_dir, ref_dir):
    """Markdown: per seed and method AA and BWT of sculpt and the reference, mean ± sd, and the
    final-row accuracies per task."""
    sculpt_dir, ref_dir = Path(sculpt_dir), Path(ref_dir)
    seeds = sorted(int(p.name.split("-")[1]) for p in ref_dir.glob("seed-*") if (sculpt_dir / p.name).exists())
    methods = [m for m in ("osft", "seqft") if any((ref_dir / f"seed-{s}" / m / "results.json").exists() for s in seeds)]
    read = lambda d, s, m: json.loads((d / f"seed-{s}" / m / "results.json").read_text())
    pct = lambda x: f"{100 * x:.1f}"
    sd = lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0
    lines = ["| method | seed | AA sculpt | AA reference | BWT sculpt | BWT reference |", "|---|---|---|---|---|---|"]
    summary = {}
    for m in methods:
        cols = {"as": [], "ar": [], "bs": [], "br": []}
        for s in seeds:
            a, b = read(sculpt_dir, s, m), read(ref_dir, s, m)
            cols["as"].append(a["aa"]); cols["ar"].append(b["aa"])
            cols["bs"].append(a["bwt"]); cols["br"].append(b["bwt"])
            lines.append(f"| {m} | {s} | {pct(a['aa'])} | {pct(b['aa'])} | {100 * a['bwt']:+.1f} | {100 * b['bwt']:+.1f} |")
        ms = lambda xs: f"{100 * statistics.mean(xs):.1f} ± {100 * sd(xs):.1f}"
        lines.append(f"| {m} | mean ± sd | {ms(cols['as'])} | {ms(cols['ar'])} | {ms(cols['bs'])} | {ms(cols['br'])} |")
        summary[m] = cols
    tasks = read(ref_dir, seeds[0], methods[0])["tasks"]
    lines += ["", "Final-row accuracy per task (mean over seeds; per seed in brackets):", "",
              "| method | side | " + " | ".join(tasks) + " |", "|---|---|" + "---|" * len(tasks)]
    for m in methods:
        for side, d in (("sculpt", sculpt_dir), ("reference", ref_dir)):
            rows = [read(d, s, m)["accuracy"][-1] for s in seeds]
            cells = [f"{pct(statistics.mean(r[j] for r in rows))} ({', '.join(pct(r[j]) for r in rows)})"
                     for j in range(len(tasks))]
            lines.append(f"| {m} | {side} | " + " | ".join(cells) + " |")
    lines += ["", "Mean accuracy matrices R[i][j] (after task i, on task j), mean over seeds:", ""]
    for m in methods:
        for side, d in (("sculpt", sculpt_dir), ("reference", ref_dir)):
            mats = [read(d, s, m)["accuracy"] for s in seeds]
            lines.append(f"{m} {side}:")
            for i in range(len(tasks)):
                lines.append("    " + "  ".join(f"{pct(statistics.mean(mt[i][j] for mt in mats)):>5}"
                                                for j in range(len(tasks))))
    # Agreement: the difference of the means against the seed noise of a difference of means.
    lines += ["", "Agreement (difference of means vs its standard error sqrt(sd_s²/n + sd_r²/n)):", ""]
    n = len(seeds)
    for m, c in summary.items():
        for key, label in (("a", "AA"), ("b", "BWT")):
            xs, ys = c[key + "s"], c[key + "r"]
            diff = statistics.mean(xs) - statistics.mean(ys)
            se = math.sqrt(sd(xs) ** 2 / n + sd(ys) ** 2 / n)
            lines.append(f"- {m} {label}: sculpt − reference = {100 * diff:+.1f} points, "
                         f"standard error {100 * se:.1f} ({'|z| = %.2f' % (abs(diff) / se) if se > 0 else 'no spread'})")
    text = "\n".join(lines)
    print(text)
    return text


def compare_matched(sculpt_dir, matched_dir, sculpt_log=None):
    """sculpt against the reference run with --sculpt-order (the same data order): per seed and
    method the largest loss difference per task over all steps, whether the accuracy matrices
    are equal, and (with sculpt's RUST_LOG=info log of the same --seeds run) k per matrix at
    every task."""
    sculpt_dir, matched_dir = Path(sculpt_dir), Path(matched_dir)
    seeds = sorted(int(p.name.split("-")[1]) for p in matched_dir.glob("seed-*") if (sculpt_dir / p.name).exists())
    lines = ["| method | seed | AA sculpt | AA reference | BWT sculpt | BWT reference | equal matrices | "
             "largest loss difference per task, absolute (relative) |", "|---|---|---|---|---|---|---|---|"]
    for m in ("osft", "seqft"):
        for s in seeds:
            a_path, b_path = sculpt_dir / f"seed-{s}" / m, matched_dir / f"seed-{s}" / m
            if not (a_path / "results.json").exists() or not (b_path / "results.json").exists():
                continue
            a, b = (json.loads((d / "results.json").read_text()) for d in (a_path, b_path))
            la = [json.loads(l) for l in (a_path / "log.jsonl").read_text().splitlines()]
            la = [r for r in la if "loss" in r and "step" in r]
            lb = [json.loads(l) for l in (b_path / "log.jsonl").read_text().splitlines()]
            worst = {}
            for x, y in zip(la, lb):
                assert x["task"] == y["task"] and x["step"] == y["step"]
                d = abs(x["loss"] - y["loss"])
                w = worst.get(x["task"], (0.0, 0.0))
                worst[x["task"]] = (max(w[0], d), max(w[1], d / max(abs(y["loss"]), 1e-12)))
            same = all(abs(u - v) < 1e-9 for ra, rb in zip(a["accuracy"], b["accuracy"]) for u, v in zip(ra, rb))
            lines.append(f"| {m} | {s} | {100 * a['aa']:.1f} | {100 * b['aa']:.1f} | {100 * a['bwt']:+.1f} | "
                         f"{100 * b['bwt']:+.1f} | {'yes' if same else 'no'} | "
                         + ", ".join(f"{t} {v[0]:.1e} ({v[1]:.1e})" for t, v in worst.items()) + " |")
    if sculpt_log:
        # sculpt's log: per OSFT run (seeds in order), one block of target lines per task.
        found = [re.match(r".*subspace (\S+) (\d+)x(\d+): importance (\S+), k = (\d+)", l)
                 for l in Path(sculpt_log).read_text().splitlines()]
        found = [(f[1], int(f[5])) for f in found if f]
        at = 0
        lines.append("")
        for s in seeds:
            ranks = json.loads((matched_dir / f"seed-{s}" / "osft" / "ranks.json").read_text())
            diffs, total = [], 0
            for task in ranks:
                for c in task["choices"]:
                    name, k = found[at] if at < len(found) else (None, None)
                    ref = {x["name"]: x["k"] for x in task["choices"]}
                    at += 1
                    total += 1
                    if name is None or ref.get(name) != k:
                        diffs.append((task["task"], name, k, ref.get(name)))
            lines.append(f"seed {s}: k per matrix at every task (sculpt vs order-matched reference): "
                         f"{total - len(diffs)} of {total} equal" + (f"; differing: {diffs}" if diffs else ""))
    text = "\n".join(lines)
    print(text)
    return text


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="a Hugging Face Llama folder (config.json, model.safetensors, tokenizer.json)")
    p.add_argument("--make-model", metavar="DIR", help="write the tiny random Llama and its tokenizer (trained on --stream) to DIR")
    p.add_argument("--make-stream", metavar="STREAM", help="convert data/real-stream's stream.json into plain tasks under --out")
    p.add_argument("--stream", help="a sculpt stream file (jsonl tasks)")
    p.add_argument("--method", choices=["osft", "seqft", "both"], default="both")
    p.add_argument("--rank-policy", choices=["official", "fixed"], default="official")
    p.add_argument("--rank-ratio", type=float, default=0.5, help="fixed: fraction of min(m, n) frozen")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--beta1", type=float, default=0.9)
    p.add_argument("--beta2", type=float, default=0.999)
    p.add_argument("--eps", type=float, default=1e-8)
    p.add_argument("--importance-samples", type=int, default=128)
    p.add_argument("--max-source-len", type=int, default=128)
    p.add_argument("--max-target-len", type=int, default=16)
    p.add_argument("--seeds", default="0", help="comma-separated")
    p.add_argument("--out", help="run folder: OUT/seed-N/{osft,seqft}/results.json (--make-stream: the stream folder)")
    p.add_argument("--compare", metavar="SCULPT_OUT", help="print the table of sculpt's runs in SCULPT_OUT against --out")
    p.add_argument("--matched", metavar="REF_OUT", help="with --compare: also compare sculpt step by step with a --sculpt-order reference run in REF_OUT")
    p.add_argument("--sculpt-log", help="with --matched: sculpt's RUST_LOG=info log of the run, for k at every task")
    p.add_argument("--ranks-only", action="store_true", help="print k per target at the first task and stop")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sculpt-order", action="store_true",
                   help="draw the data order exactly as sculpt does (its SplitMix64 generator), for a step-by-step comparison of losses")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.make_stream:
        return make_stream(args.make_stream, args.out)
    if args.make_model:
        return make_model(args.make_model, args.stream)
    if args.compare:
        text = compare(args.compare, args.out)
        if args.matched:
            text += "\n\nSame data order (--sculpt-order):\n\n" + compare_matched(args.compare, args.matched, args.sculpt_log)
        Path(args.out, "comparison.md").write_text(text + "\n")
        return
    if args.ranks_only:
        return ranks_only(args)
    methods = ["osft", "seqft"] if args.method == "both" else [args.method]
    for seed in [int(s) for s in args.seeds.split(",")]:
        for method in methods:
            random.seed(seed)
            torch.manual_seed(seed)
            r = run(args, method, seed, Path(args.out) / f"seed-{seed}" / method)
            print(f"seed {seed} {method}: AA {100 * r['aa']:.1f} BWT {100 * r['bwt']:+.1f} ({r['wall_s']:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
