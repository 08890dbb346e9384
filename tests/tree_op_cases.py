"""Running the tree ops on a chosen device into junk-filled buffers, wider random cases than
``tree_cases.random_case`` (k up to 64, N up to 300), and tree / walk comparison: shared by
the CUDA op tests and the CUDA-graph test. Nothing here touches a GPU at import time.
"""

from __future__ import annotations

import random

import torch

from bastion_ext import ops
from bastion_ext.tree import DraftTree, VerifyResult
from tree_cases import TreeCase, random_latency, random_logits

JUNK = 77  # fills output buffers so that an element the op forgets to write shows up


def empty_tree(batch: int, max_nodes: int, positions: int, device) -> DraftTree:
    """``DraftTree.empty`` with every tensor filled with JUNK."""
    tree = DraftTree.empty(batch, max_nodes, positions, device)
    for t in tree.tensors().values():
        t.fill_(JUNK)
    return tree


def empty_walk(batch: int, positions: int, device) -> VerifyResult:
    """``VerifyResult.empty`` with every tensor filled with JUNK."""
    walk = VerifyResult.empty(batch, positions, device)
    for t in walk.tensors().values():
        t.fill_(JUNK)
    return walk


def run_build_tree(case: TreeCase, device) -> DraftTree:
    """``ops.build_tree`` on ``device`` (inputs moved there), into junk-filled buffers."""
    move = lambda t: None if t is None else t.to(device)  # noqa: E731
    batch, positions, _ = case.draft_logits.shape
    return ops.build_tree(
        move(case.draft_logits), case.k, case.max_nodes, policy=case.policy, budgets=move(case.budgets),
        latency_table=move(case.latency_table), accept_scale=move(case.accept_scale),
        context_lens=move(case.context_lens), out=empty_tree(batch, case.max_nodes, positions, device))  # fmt: skip


def wide_case(seed: int, max_vocab: int = 300, max_nodes: int = 300) -> TreeCase:
    """A random case with the full k range and larger trees; the seed fixes everything."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    batch, positions, vocab = rng.randint(1, 4), rng.randint(1, 8), rng.randint(1, max_vocab)
    k, n = rng.randint(1, min(vocab, 64)), rng.randint(1, max_nodes)
    policy = rng.choice(["fixed", "greedy_stop", "argmax"])
    logits = random_logits(rng, gen, (batch, positions, vocab))
    logits = logits.to(rng.choice([torch.float32, torch.float16, torch.bfloat16]))
    budgets = torch.tensor([rng.randint(1, n) for _ in range(batch)], dtype=torch.int32)
    latency = None if policy == "fixed" else random_latency(rng, gen, rng.choice([1, batch]), n)
    scale = torch.rand(rng.choice([1, batch]), generator=gen) * 3 if rng.random() < 0.5 else None
    context = torch.randint(0, 1000, (batch,), generator=gen)
    return TreeCase(logits, k, n, policy, budgets, latency, scale, context)


def describe(case: TreeCase) -> str:
    b, p, v = case.draft_logits.shape
    return f"B{b} P{p} V{v} k{case.k} N{case.max_nodes} {case.policy} {case.draft_logits.dtype}"


def random_targets(tree: DraftTree, gen: torch.Generator, hit: float = 0.7) -> torch.Tensor:
    """(batch, N + 1) int64 target tokens that follow a child of each verify token with
    probability ``hit`` (its first child or, half the time, that child's next sibling)."""
    first_child, next_sibling, tokens = (t.cpu() for t in (tree.first_child, tree.next_sibling, tree.tokens))
    batch, rows = first_child.shape
    target = torch.randint(0, 1 << 16, (batch, rows), generator=gen)
    for b in range(batch):
        for j in range(rows):
            child = int(first_child[b, j])
            if child >= 0 and float(torch.rand(1, generator=gen)) < hit:
                sibling = int(next_sibling[b, child])
                if sibling >= 0 and float(torch.rand(1, generator=gen)) < 0.5:
                    child = sibling
                target[b, j] = tokens[b, child]
    return target
