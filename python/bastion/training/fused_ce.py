"""Cross-entropy through a frozen lm_head without materialising the logits for autograd.

The drafter scores every drafted position of every root through the target's lm_head rows of
the draft vocabulary: at 2,000 roots a step that is 10,000 x 16,384 logits. Through plain
autograd they are stored, cast to fp32, log-softmaxed, gathered and then back-propagated by
four more full-size passes (a zero fill for the gather, the log-softmax backward, two casts).
Here each chunk of rows computes its logits, its loss and its gradient with respect to the
hidden states at once, in the forward (the lm_head is frozen: no weight gradient), and the
backward only scales that stored gradient: two matmuls per chunk, as in Liger's fused linear
cross-entropy.
"""

from __future__ import annotations

import torch

CHUNK_ROWS = 2048


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, row_weights, soft_ids, soft_probs, soft):
        n = hidden.shape[0]
        losses = torch.zeros(n, dtype=torch.float32, device=hidden.device)
        hits = torch.zeros(n, dtype=torch.bool, device=hidden.device)
        grad = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        # Few full-width passes (each is a read or write of n x V): the logits once, the
        # softmax once, one in-place scale, one cast. The losses and the targets' share of the
        # gradient touch only the k gathered or scattered columns of each row.
        for start in range(0, n, CHUNK_ROWS):
            rows = slice(start, min(n, start + CHUNK_ROWS))
            logits = hidden[rows].to(weight.dtype) @ weight.t()
            label, w = labels[rows].clamp(min=0)[:, None], row_weights[rows]
            hard_mass = torch.where(labels[rows] >= 0, 1 - soft, 0.0)
            # The softmax in the logits' dtype (accumulated in fp32 inside the kernel): the
            # gradient goes into a matmul in that dtype anyway, and a bf16 row is half the bytes.
            probs = logits.softmax(-1)
            picked, top = logits.gather(1, label)[:, 0], logits.amax(-1)
            hits[rows] = (labels[rows] >= 0) & (picked == top)
            # logsumexp = max logit - log(max probability): no fp32 pass over the row, and the
            # largest probability (>= 1 / V) never underflows.
            lse = top.float() - probs.amax(-1).float().log()
            loss = hard_mass * (lse - picked.float())
            mass = hard_mass
            if soft > 0:
                ids, q = soft_ids[rows], soft_probs[rows]
                loss = loss + soft * (q * (lse[:, None] - logits.gather(1, ids).float())).sum(-1)
                mass = mass + soft * q.sum(-1)
            losses[rows] = loss
            if grad is not None:
                # d loss / d logits = softmax * (target mass) - target distribution, row-weighted.
                dlogits = probs.mul_((mass * w)[:, None].to(probs.dtype))
                dlogits.scatter_add_(1, label, -(hard_mass * w)[:, None].to(probs.dtype))
                if soft > 0:
                    dlogits.scatter_add_(1, ids, (-soft * q * w[:, None]).to(probs.dtype))
                grad[rows] = (dlogits @ weight).to(hidden.dtype)
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(hits)
        return (losses * row_weights).sum(), hits

    @staticmethod
    def backward(ctx, grad_loss, _grad_hits):
        (grad,) = ctx.saved_tensors
        return grad * grad_loss, None, None, None, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, row_weights: torch.Tensor,
                         soft_ids: torch.Tensor | None = None, soft_probs: torch.Tensor | None = None,
                         soft: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted cross-entropy of ``hidden @ weight.T`` against hard and soft labels.

    hidden: (n, H) float (differentiable); weight: (V, H) frozen; labels: (n,) int64 in
    [0, V), negative = no hard label; row_weights: (n,) fp32; soft_ids: (n, k) int64 in
    [0, V) and soft_probs: (n, k) fp32 (each row sums to at most 1), used when ``soft`` > 0.
    Per row the loss is ``(1 - soft) * CE(hard) + soft * CE(soft)``. Returns (sum over rows
    of row_weights * loss: a scalar with a gradient to ``hidden``; (n,) bool, whether the
    argmax is the hard label).
    """
    if soft > 0 and (soft_ids is None or soft_probs is None):
        raise ValueError("soft > 0 needs soft_ids and soft_probs")
    return _LinearCrossEntropy.apply(hidden, weight.detach(), labels, row_weights.float(), soft_ids, soft_probs, float(soft))
