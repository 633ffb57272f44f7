"""The official adaptive rank rule, transcribed to Python, on a small fixture.

Writes tests/fixtures/official_rank.json, which tests/official_rank.rs checks sculpt's
`official` rank policy against: for each matrix W (m x n) of the fixture and the same inputs
X (tokens x n), the importance I(W) and the frozen rank k.

The transcription follows the adaptive branch of `auto_generate_target_svd_config` in
notebooks/finetune_svd.py of Red-Hat-AI-Innovation-Team/orthogonal-subspace-learning
(commented out there in favour of the fixed schedule, and described in the paper):
X is taken as (in_features, samples), Y = W X; both are cut to their first d = min(m, n)
rows, every column is divided by its norm (+1e-8), I(W) is the mean over samples of the
columns' dot products; I_n = I / (mean of I over all matrices + 1e-8);
CR = mrr + I_n (trr - mrr) with mrr = d / 2 and trr = d; k = int(round(CR)) clamped to [1, d].

    python tools/official_rank_reference.py
"""

import json
from pathlib import Path

import torch

SHAPES = {"a.q": (6, 10), "a.o": (10, 6), "b.up": (8, 8), "b.down": (3, 12), "c.k": (5, 5)}
TOKENS = 7


def official_importance(w, x_rows):
    x = x_rows.transpose(0, 1)  # (in_features, samples), as the official hook stores it
    y = torch.mm(w, x)
    m = min(w.shape)
    x_mod, y_mod = x[:m, :], y[:m, :]
    x_norm = x_mod / (torch.norm(x_mod, dim=0, keepdim=True) + 1e-8)
    y_norm = y_mod / (torch.norm(y_mod, dim=0, keepdim=True) + 1e-8)
    return torch.mean(torch.sum(x_norm * y_norm, dim=0)).item()


def official_ranks(importance, shapes):
    mean = sum(importance.values()) / len(importance)
    ranks = {}
    for name, (rows, cols) in shapes.items():
        d = min(rows, cols)
        normalised = importance[name] / (mean + 1e-8)
        mrr, trr = d / 2.0, d
        cr = mrr + normalised * (trr - mrr)
        ranks[name] = max(1, min(int(round(cr)), d))
    return ranks


def main():
    torch.manual_seed(0)
    matrices = {}
    for i, (name, (rows, cols)) in enumerate(SHAPES.items()):
        # A scaled identity plus noise of varying size, so importances differ.
        eye = torch.eye(rows, cols, dtype=torch.float64)
        w = eye * (1.0 + 0.3 * i) + torch.randn(rows, cols, dtype=torch.float64) * (0.2 + 0.6 * i)
        x = torch.randn(TOKENS, cols, dtype=torch.float64)
        matrices[name] = (w.float().double(), x.float().double())
    importance = {name: official_importance(w, x) for name, (w, x) in matrices.items()}
    ranks = official_ranks(importance, SHAPES)
    out = {
        "source": "tools/official_rank_reference.py (the official adaptive rule, transcribed)",
        "tokens": TOKENS,
        "matrices": [
            {
                "name": name,
                "rows": SHAPES[name][0],
                "cols": SHAPES[name][1],
                "w": [float(v) for v in w.flatten()],
                "x": [float(v) for v in x.flatten()],
                "importance": importance[name],
                "k": ranks[name],
            }
            for name, (w, x) in matrices.items()
        ],
    }
    path = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "official_rank.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    for name in SHAPES:
        print(f"{name}: importance {importance[name]:.4f}, k {ranks[name]} of {min(SHAPES[name])}")


if __name__ == "__main__":
    main()
