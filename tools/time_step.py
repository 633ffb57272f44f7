"""Times the training step of `sculpt bench step` in PyTorch, on the same machine, for comparison.

A t5-small-shaped random T5ForConditionalGeneration, batch x tokens random source and target
ids, one step = forward, backward, AdamW. With --osft, also the SVD pass over the target
matrices and the same step with every target's AdamW update projected out of its frozen
subspace (strict mode, k = 45% of min(m, n), as the bench's default rank policy at importance 0.5).

    python tools/time_step.py [--batch 8] [--tokens 128] [--layers 6] [--runs 3] [--device cpu|cuda] [--osft] [--json]

Run `cargo run --release -- bench step` with the same --batch/--tokens/--layers/--runs beside it.
"""

import argparse
import json
import re
import time

import torch
from transformers import T5Config, T5ForConditionalGeneration

TARGETS = re.compile(r"(encoder|decoder)\.block\.\d+\.layer\.\d+\.(SelfAttention\.[qkvo]|DenseReluDense\.(wi|wo|wi_0|wi_1))\.weight")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--osft", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    dev = torch.device(args.device)
    config = T5Config(num_layers=args.layers, num_decoder_layers=args.layers, dropout_rate=0.0,
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    model = T5ForConditionalGeneration(config).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01)
    ids = lambda: torch.randint(2, config.vocab_size, (args.batch, args.tokens), device=dev)  # noqa: E731
    source, target = ids(), ids()

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    frozen = {}

    def step():
        opt.zero_grad(set_to_none=False)
        loss = model(input_ids=source, labels=target).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if frozen:
            before = {n: p.detach().clone() for n, p in model.named_parameters() if n in frozen}
        opt.step()
        if frozen:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n in frozen:
                        u, v = frozen[n]
                        d = p - before[n]
                        d = d - u @ (u.T @ d)
                        d = d - (d @ v) @ v.T
                        p.copy_(before[n] + d)
        loss.item()

    def mean_ms():
        step()
        sync()
        start = time.perf_counter()
        for _ in range(args.runs):
            step()
        sync()
        return (time.perf_counter() - start) * 1e3 / args.runs

    tokens = 2 * args.batch * args.tokens
    result = {"batch": args.batch, "tokens": args.tokens, "layers": args.layers, "device": str(dev),
              "threads": torch.get_num_threads()}
    result["step_ms"] = mean_ms()
    result["tokens_per_s"] = tokens / result["step_ms"] * 1e3
    if args.osft:
        sync()
        start = time.perf_counter()
        with torch.no_grad():
            for n, p in model.named_parameters():
                if TARGETS.fullmatch(n):
                    u, _, vh = torch.linalg.svd(p, full_matrices=False)
                    k = int(0.45 * min(p.shape))
                    frozen[n] = (u[:, :k].contiguous(), vh[:k].T.contiguous())
        sync()
        result["svd_pass_ms"] = (time.perf_counter() - start) * 1e3
        result["osft_step_ms"] = mean_ms()
        result["osft_tokens_per_s"] = tokens / result["osft_step_ms"] * 1e3
        result["projection_share"] = max(0.0, (result["osft_step_ms"] - result["step_ms"]) / result["osft_step_ms"])
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:<18} {v:.1f}" if isinstance(v, float) else f"{k:<18} {v}")


if __name__ == "__main__":
    main()
