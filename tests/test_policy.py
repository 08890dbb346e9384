"""bastion_ext.policy: the build arguments of each policy, the cut they make through
build_tree, and Bastion's batch allocation."""

import math

import pytest
import torch
from budget_helpers import draft_logits

from bastion_ext import ops
from bastion_ext.latency import LatencyModel, ModelSpec, RooflineModel
from bastion_ext.policy import Bastion, BuildArgs, Fixed, GreedyStop, allocate_batch_budget
from bastion_ext.surrogate import surrogate_accept, surrogate_prefix

SMOLLM2 = ModelSpec(30, 576, 9, 3, 64, 1536, 49152, element_bytes=4)


def cpu_latency(draft_seconds=0.01):
    """A latency model shaped like the embedded target on a 2-core CPU (roughly its calibration)."""
    return LatencyModel(RooflineModel(SMOLLM2, peak_flops=90e9, bandwidth=9e9, overhead=0.03), draft_seconds=draft_seconds)


class TableLatency:
    """Stands in for a LatencyModel with a hand-written table (for hand-made cases)."""

    def __init__(self, table):
        self.table = torch.tensor(table, dtype=torch.float32)

    def latency_table(self, context_lens, n_max, device="cpu"):
        rows = 1 if isinstance(context_lens, int) else len(context_lens)
        return self.table[:n_max].expand(rows, -1).to(device)


def one_position_logits(probabilities):
    """(1, 1, V) logits whose single position gives these sorted probabilities (sum <= 1) to
    tokens 0.. and spreads the rest thinly over more tokens: with k = len(probabilities) the
    tree is the root's children in rank order and node i's score is log p_i."""
    given = torch.tensor(probabilities, dtype=torch.float64)
    rest = 1.0 - float(given.sum())
    spread = math.ceil(rest / (0.5 * float(given.min()))) + 1
    full = torch.cat([given, torch.full((spread,), rest / spread, dtype=torch.float64)])
    return torch.log(full).float().reshape(1, 1, -1)


def cut_of(policy, logits, k, context_lens=64):
    args = policy.plan(context_lens)
    return ops.build_tree(logits, k, policy.max_nodes, **args.kwargs()).n_nodes


def test_fixed_plans_a_fixed_build():
    args = Fixed(12, max_nodes=32).plan([64, 128, 256])
    assert isinstance(args, BuildArgs) and args.policy == "fixed"
    assert args.budgets.dtype == torch.int32 and args.budgets.tolist() == [12, 12, 12]
    assert args.latency_table is None and args.accept_scale is None
    tree = ops.build_tree(draft_logits(3, 4, 20, 1.0), 4, 32, **args.kwargs())
    assert tree.n_nodes.tolist() == [12, 12, 12]


@pytest.mark.parametrize("policy_type", [GreedyStop, Bastion])
def test_cost_aware_plans_carry_table_and_scale(policy_type):
    # Without the floor, whose second round is a plain step (no tree, so no table).
    extra = {"batch_allocation": False} if policy_type is Bastion else {}
    policy = policy_type(cpu_latency(), 48, batch=2, floor=False, **extra)
    args = policy.plan([64, 1024])
    assert args.policy == policy.name and args.budgets.tolist() == [48, 48]
    assert args.latency_table.shape == (2, 48) and args.latency_table.dtype == torch.float32
    assert bool((args.latency_table[1] > args.latency_table[0]).all())
    assert args.accept_scale.tolist() == [1.0, 1.0]
    # The drafter turns out overconfident for request 0: its surrogate is scaled down.
    for _ in range(10):
        policy.observe(torch.tensor([3.0, 3.0]), torch.tensor([1, 3]))
    scale = policy.plan([64, 1024]).accept_scale
    assert float(scale[0]) < 0.5 and float(scale[1]) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "probabilities, table, bastion_n, greedy_n",
    [
        # S = (1 + A) / T: 1.5, 1.636, 1.583, 1.5 -> both stop at 2.
        ([0.5, 0.3, 0.1, 0.05], [1.0, 1.1, 1.2, 1.3], 2, 2),
        # A step in T (a new tile of work at n = 2): S = 1.4, 1.231, 1.385, 1.5.
        # Greedy stops at the first drop; the argmax looks past it.
        ([0.4, 0.2, 0.2, 0.15], [1.0, 1.3, 1.3, 1.3], 4, 1),
        # Flat T: every node pays, both take all of them.
        ([0.4, 0.3, 0.2, 0.1], [1.0, 1.0, 1.0, 1.0], 4, 4),
        # Expensive nodes, unlikely drafts: S = 1.1, 0.767, 0.6, 0.5 -> one node.
        ([0.1, 0.05, 0.05, 0.05], [1.0, 1.5, 2.0, 2.5], 1, 1),
    ],
)
def test_bastion_picks_the_argmax_on_hand_made_cases(probabilities, table, bastion_n, greedy_n):
    logits = one_position_logits(probabilities)
    latency = TableLatency(table)
    assert cut_of(Bastion(latency, 4), logits, 4).tolist() == [bastion_n]
    assert cut_of(GreedyStop(latency, 4), logits, 4).tolist() == [greedy_n]


@pytest.mark.parametrize("seed", range(6))
def test_greedy_stop_equals_argmax_when_latency_is_convex(seed):
    batch, n_max = 8, 64
    latency = cpu_latency(draft_seconds=0.0 if seed % 2 else 0.02)
    contexts = [64 * (1 + seed + b) for b in range(batch)]
    table = latency.latency_table(contexts, n_max)
    second_difference = table[:, 2:] - 2 * table[:, 1:-1] + table[:, :-2]
    assert bool((second_difference >= -1e-6).all()), "the roofline table should be convex in n"
    logits = draft_logits(batch, 6, 40, sharpness=0.5 + 0.5 * seed, seed=seed)
    greedy = cut_of(GreedyStop(latency, n_max, batch=batch), logits, 6, contexts)
    bastion = cut_of(Bastion(latency, n_max, batch=batch, batch_allocation=False), logits, 6, contexts)
    assert torch.equal(greedy, bastion)
    assert int(bastion.min()) >= 1 and len(set(bastion.tolist())) > 1  # cuts differ by request


def test_batch_allocation_on_a_hand_made_case():
    scores = torch.log(torch.tensor([[0.9, 0.8, 0.7], [0.3, 0.1, 0.05]]))
    table = 1.0 + 0.1 * torch.arange(1, 7, dtype=torch.float32)
    # Gains in allocation order: 0.9, 0.3 (first nodes forced), 0.8, 0.7, 0.1, 0.05;
    # S(M) = (2 + A) / (1 + 0.1 M) = 2.667, 3.077, 3.357, 3.2, 3.03 for M = 2..6: M = 4.
    assert allocate_batch_budget(scores, table).tolist() == [3, 1]
    # Request 0's drafter calibrated 10x down: gains 0.09, 0.08, 0.07 no longer pay for their time
    # (S = 2.39 / 1.2 = 1.99 at M = 2, 2.49 / 1.3 = 1.92 at M = 3).
    assert allocate_batch_budget(scores, table, torch.tensor([0.1, 1.0])).tolist() == [1, 1]
    # Padding never gets allocated, and every request keeps its first node.
    padded = torch.tensor([[0.0, -math.inf, -math.inf], [-2.0, -3.0, -4.0]])
    assert allocate_batch_budget(padded, torch.ones(6)).tolist() == [1, 3]
    assert allocate_batch_budget(padded, 1.0 + torch.arange(6, dtype=torch.float32)).tolist() == [1, 1]


def modeled_tokens_per_second(tree, counts, batch_table):
    """(B + sum of surrogate A over the batch) / T_batch(total nodes), with the tree cut to counts."""
    expected = float((1.0 + surrogate_accept(tree.scores, counts)).sum())
    return expected / float(batch_table[int(counts.sum()) - 1])


def test_batch_allocation_beats_equal_budgets_on_a_mixed_batch():
    n_max, contexts = 48, [256, 256, 256, 256]
    easy = draft_logits(2, 8, 64, sharpness=4.0, seed=1)  # peaked drafter: long likely paths
    hard = draft_logits(2, 8, 64, sharpness=0.6, seed=2)  # flat drafter: little is likely
    logits = torch.cat([easy, hard])
    policy = Bastion(cpu_latency(), n_max, batch=4)
    args = policy.plan(contexts)
    assert args.policy == "fixed" and args.latency_table is None
    full = ops.build_tree(logits, 8, n_max, **args.kwargs())
    batch_table = policy.latency.batch_latency_table(contexts, 4 * n_max)
    allocated = policy.select(full)
    counts = allocated.n_nodes
    assert torch.equal(allocated.scores[:, :1], full.scores[:, :1])
    assert int(counts[:2].min()) > int(counts[2:].max()), counts
    best_equal = max(
        modeled_tokens_per_second(full, torch.full((4,), n, dtype=torch.int32), batch_table) for n in range(1, n_max + 1)
    )
    ours = modeled_tokens_per_second(full, counts, batch_table)
    assert ours > 1.02 * best_equal, (ours, best_equal, counts)
    # The allocation is the best over every budget split of its total that keeps prefixes.
    prefix = surrogate_prefix(full.scores)
    assert float(prefix.gather(1, (counts.long() - 1)[:, None]).sum()) >= float(prefix[:, int(counts.sum()) // 4 - 1].sum()) - 1e-5


@pytest.mark.parametrize(
    "call, argument",
    [
        (lambda: Fixed(0), "n"),
        (lambda: Fixed(8, max_nodes=4), "n"),
        (lambda: Bastion(cpu_latency(), 0), "max_nodes"),
        (lambda: GreedyStop(cpu_latency(), 8, batch=2).plan([64, 64, 64]), "context_lens"),
        (lambda: Fixed(4).plan([]), "context_lens"),
        (lambda: allocate_batch_budget(torch.zeros(2, 4), torch.ones(7)), "batch_table"),
        (lambda: allocate_batch_budget(torch.zeros(8), torch.ones(8)), "scores"),
        (lambda: allocate_batch_budget(torch.zeros(2, 4), torch.ones(8), torch.ones(3)), "accept_scale"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_argument(call, argument):
    with pytest.raises(ValueError, match=argument):
        call()
