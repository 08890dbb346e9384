"""Random build_tree inputs for the tests: awkward sizes, ties, peaked/flat rows, -inf entries,
all three policies with positive (sometimes convex) latency tables, fp16/bf16 logits."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch

from bastion_ext.reference import ancestor_mask_ref
from bastion_ext.tree import DraftTree, VerifyResult


@dataclass
class TreeCase:
    """Arguments of one build_tree call (the wrapper's keyword names)."""

    draft_logits: torch.Tensor
    k: int
    max_nodes: int
    policy: str
    budgets: torch.Tensor
    latency_table: torch.Tensor | None
    accept_scale: torch.Tensor | None
    context_lens: torch.Tensor

    def op_kwargs(self) -> dict:
        return {
            "policy": self.policy,
            "budgets": self.budgets,
            "latency_table": self.latency_table,
            "accept_scale": self.accept_scale,
            "context_lens": self.context_lens,
        }


def random_logits(rng: random.Random, gen: torch.Generator, shape: tuple[int, int, int]) -> torch.Tensor:
    """Logits of one of several characters, fp32."""
    kind = rng.choice(["normal", "peaked", "flat", "ties", "neg_inf", "constant"])
    if kind == "normal":
        x = torch.randn(shape, generator=gen) * rng.uniform(0.5, 4.0)
    elif kind == "peaked":
        x = torch.randn(shape, generator=gen)
        hot = torch.randint(0, shape[2], shape[:2], generator=gen)
        x.scatter_(2, hot[..., None], rng.uniform(15.0, 60.0))
    elif kind == "flat":
        x = torch.randn(shape, generator=gen) * 1e-3
    elif kind == "ties":
        # Few distinct values: many equal logits and equal path scores.
        x = torch.randint(0, 3, shape, generator=gen).float()
    elif kind == "constant":
        x = torch.full(shape, rng.uniform(-5, 5))
    else:
        x = torch.randn(shape, generator=gen) * 2
        drop = torch.rand(shape, generator=gen) < rng.uniform(0.3, 0.97)
        drop[..., rng.randrange(shape[2])] = False  # never a whole row of -inf
        x = x.masked_fill(drop, -math.inf)
    return x


def random_latency(rng: random.Random, gen: torch.Generator, rows: int, max_nodes: int) -> torch.Tensor:
    """Positive latency tables T(n): increasing, convex, or arbitrary."""
    n = torch.arange(1, max_nodes + 1, dtype=torch.float32)
    kind = rng.choice(["linear", "convex", "random", "flat"])
    if kind == "linear":
        table = rng.uniform(0.5, 2.0) + rng.uniform(0.0, 0.2) * n
    elif kind == "convex":
        table = rng.uniform(0.5, 2.0) + rng.uniform(0.0, 0.05) * n + rng.uniform(1e-4, 1e-2) * n * n
    elif kind == "flat":
        table = torch.full((max_nodes,), rng.uniform(0.1, 3.0))
    else:
        table = torch.rand(max_nodes, generator=gen) * 3 + 0.05
    return table.expand(rows, max_nodes).contiguous() * (1 + 0.1 * torch.rand(rows, 1, generator=gen))


def random_case(seed: int) -> TreeCase:
    """One random case; the seed fixes everything."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    batch = rng.choice([1, 1, 2, 3])
    positions = rng.choice([1, 2, 3, 4, 5, 7])
    vocab = rng.choice([1, 2, 5, 17, 111, 200])
    k = rng.randint(1, min(vocab, 8))
    max_nodes = rng.choice([1, 2, 5, 31, 32, 33, 64, 100])
    policy = rng.choice(["fixed", "greedy_stop", "argmax"])
    logits = random_logits(rng, gen, (batch, positions, vocab))
    logits = logits.to(rng.choice([torch.float32, torch.float32, torch.float16, torch.bfloat16]))
    budgets = torch.tensor([rng.randint(1, max_nodes) for _ in range(batch)], dtype=torch.int32)
    latency = None if policy == "fixed" else random_latency(rng, gen, rng.choice([1, batch]), max_nodes)
    scale = None
    if policy != "fixed" and rng.random() < 0.7:
        scale = torch.rand(rng.choice([1, batch]), generator=gen) * 3
    context = torch.randint(0, 1000, (batch,), generator=gen)
    return TreeCase(logits, k, max_nodes, policy, budgets, latency, scale, context)


def assert_same_tree(got: DraftTree, want: DraftTree, label: str = "", scores_atol: float = 0.0) -> None:
    """Every output tensor of ``got`` equals ``want``'s (dtype included); the log-scores to
    ``scores_atol`` (0: bit for bit; the CUDA tests allow 1e-5), the -inf padding exactly."""
    for name, w in want.tensors().items():
        g, w = getattr(got, name).cpu(), w.cpu()
        assert g.dtype == w.dtype, f"{label}: {name} dtype {g.dtype} != {w.dtype}"
        if name == "scores" and scores_atol > 0:
            torch.testing.assert_close(g, w, atol=scores_atol, rtol=0, msg=lambda m: f"{label}: scores: {m}")
        elif not torch.equal(g, w):
            bad = (g != w).nonzero()[:5].tolist()
            raise AssertionError(f"{label}: {name} differs at {bad}: got {g.flatten()[:16].tolist()}, "
                                 f"want {w.flatten()[:16].tolist()}")


def assert_same_walk(got: VerifyResult, want: VerifyResult, label: str = "") -> None:
    for name in ("accepted_nodes", "accept_len", "bonus"):
        g, w = getattr(got, name).cpu(), getattr(want, name).cpu()
        assert torch.equal(g, w), f"{label}: {name}: got {g.tolist()}, want {w.tolist()}"



def assert_tree_invariants(tree: DraftTree, budgets: list[int], context_lens: list[int]) -> None:
    """What every tree must satisfy whatever its logits: 1 <= n <= budget, parents pop before
    their children, depths and positions follow the parents, scores never increase, the
    mask is the ancestor relation, and every element past the cut holds its padding value."""
    for b in range(tree.batch_size):
        n = int(tree.n_nodes[b])
        parents = tree.parents[b, :n].tolist()
        depth = tree.depth[b, :n].tolist()
        scores = tree.scores[b, :n].tolist()
        assert 1 <= n <= budgets[b]
        for i, p in enumerate(parents):
            assert -1 <= p < i, "a parent pops before its child (prefix-closed)"
            assert depth[i] == (1 if p < 0 else depth[p] + 1)
        assert all(scores[i] >= scores[i + 1] for i in range(n - 1)), "scores non-increasing in pop order"
        assert tree.positions[b, :n].tolist() == [context_lens[b] + d for d in depth]
        assert torch.equal(tree.dense_mask()[b, :n, :n], ancestor_mask_ref(parents))
        # Padding values past the cut.
        assert (tree.tokens[b, n:] == -1).all() and (tree.parents[b, n:] == -1).all()
        assert (tree.depth[b, n:] == 0).all() and (tree.positions[b, n:] == -1).all()
        assert (tree.scores[b, n:] == -math.inf).all() and (tree.ancestor_bits[b, n:] == 0).all()
        assert (tree.first_child[b, n + 1 :] == -1).all() and (tree.next_sibling[b, n:] == -1).all()
