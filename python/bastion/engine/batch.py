"""The batch: a fixed number of request slots, the state of every slot (the target's KV cache,
the drafter's context, the policy's learnt state, the round buffers) and the host's view of
the requests in them.

Every tensor is allocated once, at the capacity of the whole run, and never copied or
reallocated while it runs: a request that finishes frees its slot (``live`` goes to 0: its
committed lengths stop growing and its trees keep no nodes), and the next waiting prompt
takes the slot (its prompt prefilled into that slot alone). Every forward runs over all
slots, so shapes stay fixed; a free slot's outputs are never read.

Each round reads the device once (:meth:`Batch.read`): the tokens the previous round
committed, with whatever the round needs on the host (its trees' node counts). A request
whose output is complete is therefore seen one round late; its tokens past the end are cut.
"""

from __future__ import annotations

from collections import deque

import torch

from .held_context import HeldContext
from .tree_ops import RoundBuffers


class Request:
    """The host's view of one request: what it emitted, whether it is done, its rounds."""

    def __init__(self, index: int, prompt: list[int], max_new_tokens: int, eos: set[int], on_tokens):
        self.index, self.prompt_len, self.max_new_tokens, self.eos, self.on_tokens = index, len(prompt), max_new_tokens, eos, on_tokens
        self.emitted: list[int] = []
        self.generated = 0  # tokens committed by the rounds, before the cut at EOS / the limit
        self.done = False
        self.rounds: list[dict] = []

    @property
    def committed_len(self) -> int:
        """Tokens in the target's cache: the prompt and everything generated but the newest
        token (the next round's root, which the prefill also leaves out of the cache)."""
        return self.prompt_len + max(self.generated, 1) - 1

    def commit(self, new: list[int]) -> None:
        """Append a round's tokens, cut at EOS / the length limit."""
        self.generated += len(new)
        new = new[: self.max_new_tokens - len(self.emitted)]
        stop = next((i for i, t in enumerate(new) if t in self.eos), None)
        if stop is not None:
            new = new[: stop + 1]
        self.emitted.extend(new)
        if self.on_tokens is not None and new:
            self.on_tokens(self.index, new)
        self.done = stop is not None or len(self.emitted) >= self.max_new_tokens


class Batch:
    """Up to ``capacity`` requests in flight over the prompts of one run.

    Parameters
    ----------
    target : ``TargetCache`` of ``capacity`` slots, each long enough for the longest prompt,
        its generation and one verify.
    prompts : every request's token ids, admitted in order as slots free up.
    max_new_tokens, eos, on_tokens : each request's limit, stop tokens and streaming callback
        (request index, new token ids).
    on_finish : called with each request as it finishes (at the read that sees it done).
    sampler : picks each prefill's first token (the uniform of its request and position).
    drafter, policy, records : the speculative state (None for ``ar``).
    positions, max_nodes : the drafter's P and the trees' capacity (0 for ``ar``).

    Attributes (device tensors, (capacity, ...), written in place)
    ----------
    roots : (capacity,) int64, each slot's last committed token, not yet in the cache.
    pending : (capacity, P + 2) int64, what the last round committed per slot: accepted
        length, the path's tokens (-1 after it), the bonus token; read at the next round.
    request_ids : (capacity,) int64, each slot's request index (the uniforms' key).
    """

    def __init__(self, target, prompts: list[list[int]], max_new_tokens: int, eos: set[int], on_tokens, sampler,
                 drafter=None, policy=None, records=None, positions: int = 0, max_nodes: int = 0, on_finish=None):
        self.target, self.sampler, self.drafter, self.policy, self.records = target, sampler, drafter, policy, records
        self.on_finish = on_finish
        self.positions = positions
        self.prompts = prompts
        self.requests = [Request(i, p, max_new_tokens, eos, on_tokens) for i, p in enumerate(prompts)]
        self.waiting = deque(self.requests)
        capacity = target.batch_size
        self.slots: list[Request | None] = [None] * capacity
        device = target.device
        self.state = None if drafter is None else drafter.new_state(capacity, target.cache.capacity)
        vocab = None if sampler.greedy else target.model.config.vocab_size
        self.buffers = None if drafter is None else RoundBuffers(capacity, max_nodes, positions, device, vocab)
        # max_nodes + 1 steps at most: the drafter's bound (the target's) plus the held steps
        # then stays within the slot capacity, which leaves room for a verify of max_nodes.
        self.held = None if drafter is None else HeldContext(capacity, max_nodes + 1, device)
        self.roots = torch.zeros((capacity,), dtype=torch.int64, device=device)
        self.pending = torch.zeros((capacity, positions + 2), dtype=torch.int64, device=device)
        self.request_ids = torch.zeros((capacity,), dtype=torch.int64, device=device)
        self.retired: list[int] = []  # slots freed at the last read, whose trees no longer stand
        self.accepted: list[int] = [0] * capacity  # per slot, the draft tokens accepted by the last round
        target.live.zero_()

    # -- the host's view ---------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """Whether any request is in flight or waiting."""
        return bool(self.waiting) or any(r is not None for r in self.slots)

    @property
    def live(self) -> tuple[bool, ...]:
        """Which slots hold a request."""
        return tuple(r is not None for r in self.slots)

    def context_lens(self) -> list[int]:
        """Each slot's committed tokens as the host knows them (0 for a free slot)."""
        return [0 if r is None else r.committed_len for r in self.slots]

    def remaining(self) -> list[int]:
        """The tokens each slot's request may still emit, as the host knows them (0 for a free slot)."""
        return [0 if r is None else max(r.max_new_tokens - r.generated, 0) for r in self.slots]

    # -- requests joining and leaving --------------------------------------------------------

    def admit(self) -> None:
        """Fill the free slots with waiting prompts: one prefill forward of them alone into their
        slots, the drafter's context of those slots started afresh, the policy's state of those
        slots reset, and each one's first token pending for the next read."""
        free = [slot for slot, r in enumerate(self.slots) if r is None][: len(self.waiting)]
        if not free:
            return
        joining = [self.waiting.popleft() for _ in free]
        rows = torch.tensor(free, dtype=torch.int64, device=self.target.device)
        prompts = [self.prompts[r.index] for r in joining]
        logits, features = self.target.prefill(prompts, free)
        lengths = torch.tensor([len(p) for p in prompts], dtype=torch.int64, device=rows.device)
        self.request_ids.index_copy_(0, rows, torch.tensor([r.index for r in joining], dtype=torch.int64, device=rows.device))
        roots = self.sampler.pick(logits, self.request_ids.index_select(0, rows), lengths)
        self.roots.index_copy_(0, rows, roots)
        first = torch.full((len(free), self.positions + 2), -1, dtype=torch.int64, device=rows.device)
        first[:, 0], first[:, -1] = 0, roots
        self.pending.index_copy_(0, rows, first)
        self.target.live.index_fill_(0, rows, 1)
        if self.drafter is not None:
            self.flush_held()  # the held steps belong to the slots' requests before this admission
            longest = max(len(p) for p in prompts)
            positions = torch.arange(longest, device=rows.device).expand(len(free), longest)
            self.drafter.extend(self.state, features, positions, counts=lengths, rows=rows)
            self.policy.reset(free)
        for slot, request in zip(free, joining):
            self.slots[slot] = request
        self.set_bounds()

    def flush_held(self) -> None:
        """Give the drafter the plain steps' held context (before it drafts or a request joins)."""
        if self.held.held:
            self.held.flush(self.drafter, self.state)
            self.state.set_bound(self.target.bound)

    def set_bounds(self) -> None:
        """Tell the caches the longest committed length among the requests in flight."""
        longest = max(self.context_lens())
        self.target.set_bound(longest)
        if self.state is not None:
            self.state.set_bound(longest)

    def read(self, extra: torch.Tensor | None = None) -> list[list[int]]:
        """The round's one host read: ``extra`` ((capacity, k) int64, what the round needs on
        the host) with the tokens the previous round committed. Commits each request's tokens
        (records their outcome), keeps each slot's accepted length (``accepted``) and frees
        the slots of the requests that are done (their committed lengths stop growing from
        now on). Returns each slot's ``extra`` values."""
        block = self.pending if extra is None else torch.cat([extra, self.pending], 1)
        values = block.tolist()  # the round's one host read
        self.accepted = [row[-2 - self.positions] for row in values]
        self.retired = []
        for slot, request in enumerate(self.slots):
            if request is None:
                continue
            committed = values[slot][-2 - self.positions:]
            accepted = committed[1:1 + committed[0]]
            if self.records is not None:
                self.records.outcome(request, committed[0], accepted, committed[-1])
            request.commit(accepted + [committed[-1]])
            if request.done:
                self.slots[slot] = None
                self.retired.append(slot)
                if self.on_finish is not None:
                    self.on_finish(request)
        if self.retired:
            self.target.live.index_fill_(0, torch.tensor(self.retired, device=self.target.device), 0)
        if any(r is not None for r in self.slots):
            self.set_bounds()
        return [row[: len(row) - 2 - self.positions] for row in values]
