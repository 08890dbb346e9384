"""compact_kv: the op against the reference on random paths (CPU, and CUDA where present),
the in-place contract, bad inputs naming the argument, opcheck."""

import pytest
import op_calls
import torch

from bastion_ext import ops
from bastion_ext.reference import compact_kv_ref

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def random_path_case(seed: int, dtype=torch.float32, device="cpu"):
    """A cache with random contents and, per request, a root slot and an increasing path of
    verify nodes that fits in the cache (empty paths and paths of every node included)."""
    gen = torch.Generator().manual_seed(seed)
    randint = lambda lo, hi: int(torch.randint(lo, hi, (), generator=gen))  # noqa: E731
    stacked, batch, heads, head_dim = randint(1, 5), randint(1, 6), randint(1, 4), randint(1, 9)
    positions, nodes = randint(1, 9), randint(1, 40)
    slots = randint(nodes + 2, nodes + 30)
    cache = torch.randn(stacked, batch, heads, slots, head_dim, generator=gen).to(dtype)
    cache_lens = torch.tensor([randint(0, slots - nodes - 1) for _ in range(batch)], dtype=torch.int64)
    accepted = torch.full((batch, positions), -1, dtype=torch.int32)
    accept_len = torch.zeros(batch, dtype=torch.int32)
    for b in range(batch):
        length = randint(0, min(positions, nodes) + 1)
        path = torch.randperm(nodes, generator=gen)[:length].sort().values
        accepted[b, :length] = path.int()
        accept_len[b] = length
    move = lambda t: t.to(device)  # noqa: E731
    return move(cache), move(cache_lens), move(accepted), move(accept_len)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_compact_kv_matches_reference(device, dtype):
    for seed in range(200 if dtype == torch.float32 else 40):
        cache, cache_lens, accepted, accept_len = random_path_case(seed, dtype, device)
        want = compact_kv_ref(cache.cpu(), cache_lens.cpu(), accepted.cpu(), accept_len.cpu())
        got = op_calls.compact_kv(cache, cache_lens, accepted, accept_len)
        assert got is cache
        torch.testing.assert_close(got.cpu(), want, rtol=0, atol=0, msg=f"seed {seed}")


def test_compact_kv_moves_the_path_after_the_root():
    # One request, root at slot 2, verify nodes at 3.., path = nodes 1 and 4.
    cache = torch.arange(10, dtype=torch.float32).reshape(1, 1, 1, 10, 1).clone()
    op_calls.compact_kv(cache, torch.tensor([2]), torch.tensor([[1, 4, -1]], dtype=torch.int32), torch.tensor([2], dtype=torch.int32))
    assert cache.flatten().tolist() == [0, 1, 2, 4, 7, 5, 6, 7, 8, 9]


def data_free_faults(cache, cache_lens, accepted, accept_len) -> list:
    """(arguments, message) the op rejects without reading tensor data: its fake must too."""
    return [
        ((cache[0], cache_lens, accepted, accept_len), "cache must be 5-D"),
        ((cache.int(), cache_lens, accepted, accept_len), "cache must be float32"),
        ((cache.transpose(3, 4), cache_lens, accepted, accept_len), "cache must be contiguous"),
        ((cache, cache_lens.int(), accepted, accept_len), "cache_lens must be int64"),
        ((cache, cache_lens[:0], accepted, accept_len), "cache_lens must have shape"),
        ((cache, cache_lens, accepted.long(), accept_len), "accepted_nodes must be int32"),
        ((cache, cache_lens, accepted, accept_len[:0]), "accept_len must have shape"),
    ]


def test_compact_kv_bad_inputs_name_the_argument():
    cache, cache_lens, accepted, accept_len = random_path_case(3)
    batch, slots = cache.shape[1], cache.shape[3]
    cases = data_free_faults(cache, cache_lens, accepted, accept_len) + [
        ((cache, cache_lens, accepted, torch.full((batch,), accepted.shape[1] + 1, dtype=torch.int32)), "accept_len must be in"),
        ((cache, torch.full((batch,), slots, dtype=torch.int64), accepted, accept_len), "cache_lens must be in"),
        ((cache, cache_lens, torch.zeros((batch, 2), dtype=torch.int32), torch.full((batch,), 2, dtype=torch.int32)), "accepted_nodes must increase"),
        ((cache, cache_lens, torch.full_like(accepted, slots), torch.ones(batch, dtype=torch.int32)), "points past the cache"),
        (([0.0], cache_lens, accepted, accept_len), "cache must be a torch.Tensor"),
    ]
    for args, message in cases:
        before = args[0].clone() if isinstance(args[0], torch.Tensor) else None
        with pytest.raises(ValueError, match=message):
            ops.compact_kv(*args)
        if before is not None:
            assert torch.equal(args[0], before), f"{message}: the cache was written before the error"


def test_compact_kv_opcheck():
    cache, cache_lens, accepted, accept_len = random_path_case(5)
    torch.library.opcheck(torch.ops.bastion_ext.compact_kv.default, (cache, cache_lens, accepted, accept_len))


def test_the_fake_rejects_what_the_op_rejects_without_data():
    """On meta tensors the op runs its fake (bastion_ext/fakes.py): ValueError naming the argument."""
    cache, cache_lens, accepted, accept_len = (t.to("meta") for t in random_path_case(4))
    for args, message in data_free_faults(cache, cache_lens, accepted, accept_len):
        argument = message.split(" ")[0]
        with pytest.raises(ValueError, match=rf"^{argument}\b"):
            torch.ops.bastion_ext.compact_kv(*args)
    torch.ops.bastion_ext.compact_kv(cache, cache_lens, accepted, accept_len)
