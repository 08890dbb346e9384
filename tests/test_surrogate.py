"""bastion_ext.surrogate: the expected accepted length, its online calibration, and the
realized accepted length of any tree on a recorded round."""

import math

import pytest
import torch
from budget_helpers import draft_logits

from bastion_ext import ops
from bastion_ext.reference import verify_greedy_ref
from bastion_ext.tree import DraftTree
from bastion_ext.surrogate import AcceptCalibrator, realized_accept_len, realized_accept_prefix, surrogate_accept, surrogate_prefix


def test_surrogate_prefix_sums_path_probabilities():
    scores = torch.log(torch.tensor([[0.5, 0.25, 0.125, 0.0], [0.9, 0.05, 0.05, 0.01]]))
    scores[0, 3] = -math.inf
    prefix = surrogate_prefix(scores)
    assert prefix.dtype == torch.float32
    assert torch.allclose(prefix, torch.tensor([[0.5, 0.75, 0.875, 0.875], [0.9, 0.95, 1.0, 1.01]]))
    assert torch.allclose(surrogate_accept(scores, torch.tensor([2, 4], dtype=torch.int32)), torch.tensor([0.75, 1.01]))
    with pytest.raises(ValueError, match="scores"):
        surrogate_prefix(torch.tensor([0.1, 0.2]))


def test_surrogate_is_the_expected_accepted_length_of_a_calibrated_drafter():
    """True tokens drawn from the drafter's own marginals: E[accepted] = A(n) exactly."""
    positions, vocab = 4, 12
    logits = draft_logits(1, positions, vocab, sharpness=2.0, seed=3)
    tree = ops.build_tree(logits, 4, 24)
    generator = torch.Generator().manual_seed(0)
    draws = 4000
    probs = torch.softmax(logits[0], dim=-1)
    truth = torch.stack([torch.multinomial(probs[p], draws, replacement=True, generator=generator) for p in range(positions)], dim=1)
    batch_tree = DraftTree(**{name: t.expand(draws, *t.shape[1:]) for name, t in tree.tensors().items()}, draft_positions=positions)
    realized = realized_accept_prefix(truth, batch_tree).double()
    mean, stderr = realized.mean(0), realized.std(0) / math.sqrt(draws)
    expected = surrogate_prefix(tree.scores)[0].double()
    assert bool(((mean - expected).abs() <= 4 * stderr + 1e-3).all()), (mean, expected)


@pytest.mark.parametrize("seed", range(4))
def test_realized_accept_len_matches_the_greedy_walk(seed):
    batch, positions, vocab, n_max = 6, 5, 11, 40
    tree = ops.build_tree(draft_logits(batch, positions, vocab, sharpness=1.5, seed=seed), 5, n_max)
    generator = torch.Generator().manual_seed(100 + seed)
    # Targets that mostly pick the drafter's top candidates, so paths of every length occur.
    top = torch.topk(draft_logits(batch, positions, vocab, 1.5, seed), 3, dim=-1).indices
    truth = top.gather(2, torch.randint(3, (batch, positions, 1), generator=generator))[:, :, 0]
    # The target's argmax at each verify token, on the true path: the true token one level down.
    node_next = truth.gather(1, tree.depth.long().clamp(max=positions - 1))
    target_argmax = torch.cat([truth[:, :1], node_next], dim=1)
    prefix = realized_accept_prefix(truth, tree)
    for n in (1, 3, 10, n_max):
        n_nodes = torch.minimum(tree.n_nodes, torch.tensor(n, dtype=torch.int32)).expand(batch).contiguous()
        accept_len = verify_greedy_ref(tree.cut(n_nodes), target_argmax).accept_len
        assert torch.equal(prefix.gather(1, (n_nodes.long() - 1)[:, None])[:, 0], accept_len)
        assert torch.equal(realized_accept_len(truth, tree.cut(n_nodes)), accept_len)


def test_calibrator_learns_an_overconfident_drafter():
    calibrator = AcceptCalibrator(batch=2, decay=0.9)
    assert torch.equal(calibrator.scale, torch.ones(2))
    generator = torch.Generator().manual_seed(0)
    for _ in range(60):
        predicted = 2.0 + torch.rand(2, generator=generator)
        # Request 0 realizes half its prediction on average, request 1 all of it.
        realized = torch.stack([torch.bernoulli(predicted[0] / 4, generator=generator) * 2, predicted[1]])
        calibrator.observe(predicted, realized)
    assert float(calibrator.scale[0]) == pytest.approx(0.5, abs=0.2)
    assert float(calibrator.scale[1]) == pytest.approx(1.0, abs=1e-5)
    calibrator.reset(torch.tensor([True, False]))
    assert float(calibrator.scale[0]) == 1.0


@pytest.mark.parametrize(
    "call, argument",
    [
        (lambda: AcceptCalibrator(batch=0), "batch"),
        (lambda: AcceptCalibrator(decay=1.0), "decay"),
        (lambda: AcceptCalibrator(prior=0.0), "prior"),
        (lambda: AcceptCalibrator(batch=2).observe(torch.ones(3), torch.ones(3)), "predicted"),
        (lambda: realized_accept_prefix(torch.zeros(2, 3, dtype=torch.long), DraftTree.empty(1, 4, 3)), "target_tokens"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_argument(call, argument):
    with pytest.raises(ValueError, match=argument):
        call()
