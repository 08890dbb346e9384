"""tree_attention (the ``bastion_ext::tree_attention`` op on a plan) against the dense-mask SDPA
reference; the op's schema and fake through opcheck; one plan run by several layers.

On a machine without CUDA the Triton kernel runs through the interpreter (TRITON_INTERPRET=1
must be set before the kernel module is imported, hence the top of this file), on small shapes
in fp32 / fp16. With CUDA the same tests run compiled, plus the bf16 grid (marked ``cuda``).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from bastion_ext.attention import plan as attention_plan  # noqa: E402
from bastion_ext.attention import plan_tree_attention, run_tree_attention, tree_attention  # noqa: E402
from bastion_ext.reference import ancestor_bits_ref, build_tree_ref, tree_attention_ref  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# fp32 runs with exact (ieee) dot products; fp16 loses the output rounding (2^-11 relative) and
# the rounding of the probabilities before the P @ V product, on outputs of magnitude < 1.
ATOL = {torch.float32: 2e-5, torch.float16: 2e-3}


def make_parents(shape: str, batch: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """(batch, n) int32 parent arrays of one tree shape; parents precede their children."""
    idx = torch.arange(n)
    if shape == "chain":
        parents = (idx - 1).expand(batch, n)
    elif shape == "star":
        parents = torch.full((batch, n), -1)
    elif shape == "deep_wide":
        # Each node hangs off one of the few nodes just before it, or off the root: long paths
        # and many siblings at once.
        back = torch.randint(1, 6, (batch, n), generator=gen)
        parents = torch.where(torch.rand(batch, n, generator=gen) < 0.15, -1, idx - back).clamp(min=-1)
    else:
        raise ValueError(f"unknown tree shape {shape!r}")
    return parents.to(torch.int32).contiguous()


def make_inputs(batch, n_q_heads, n_kv_heads, n_nodes, head_dim, cache_lens, dtype, in_cache, gen, capacity=None):
    """Random q / k / v for ``tree_attention`` in either layout, on DEVICE."""
    capacity = max(cache_lens) if capacity is None else capacity
    n_verify = n_nodes + 1
    cache_rows = capacity + n_verify if in_cache else capacity

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(dtype).to(DEVICE)

    q = randn(batch, n_q_heads, n_verify, head_dim)
    k_cache = randn(batch, n_kv_heads, cache_rows, head_dim)
    v_cache = randn(batch, n_kv_heads, cache_rows, head_dim)
    if in_cache:
        k_tree = v_tree = None
    else:
        k_tree = randn(batch, n_kv_heads, n_verify, head_dim)
        v_tree = randn(batch, n_kv_heads, n_verify, head_dim)
    lens = torch.tensor(cache_lens, dtype=torch.int64, device=DEVICE)
    return q, k_cache, v_cache, k_tree, v_tree, lens


def run_both(args, bits, num_splits=None):
    q, k_cache, v_cache, k_tree, v_tree, lens = args
    bits = bits.to(DEVICE)
    ours = tree_attention(q, k_cache, v_cache, k_tree, v_tree, bits, lens, num_splits=num_splits)
    ref = tree_attention_ref(q, k_cache, v_cache, k_tree, v_tree, bits, lens)
    return ours, ref


@pytest.mark.parametrize("in_cache", [False, True], ids=["separate", "in_cache"])
@pytest.mark.parametrize("shape", ["chain", "star", "deep_wide"])
def test_tree_shapes(shape, in_cache):
    gen = torch.Generator().manual_seed(10 * ["chain", "star", "deep_wide"].index(shape) + in_cache)
    # 46 verify tokens x 4 heads = 184 rows: not a multiple of the row block.
    bits = ancestor_bits_ref(make_parents(shape, 2, 45, gen))
    args = make_inputs(2, 8, 2, 45, 64, [37, 0], torch.float32, in_cache, gen)
    ours, ref = run_both(args, bits)
    torch.testing.assert_close(ours, ref, atol=ATOL[torch.float32], rtol=0)


@pytest.mark.parametrize("in_cache", [False, True], ids=["separate", "in_cache"])
def test_single_node_tree(in_cache):
    gen = torch.Generator().manual_seed(3)
    bits = torch.ones((3, 1, 1), dtype=torch.int32)
    args = make_inputs(3, 4, 4, 1, 64, [0, 1, 9], torch.float32, in_cache, gen)
    ours, ref = run_both(args, bits)
    torch.testing.assert_close(ours, ref, atol=ATOL[torch.float32], rtol=0)


def test_build_tree_output_with_padding():
    """A real tree from build_tree's oracle, cut below capacity: padding rows are all-zero bits
    (those verify tokens see the cache and the root only) and must not disturb the others."""
    gen = torch.Generator().manual_seed(4)
    tree = build_tree_ref(torch.randn(2, 5, 40, generator=gen), k=4, max_nodes=70, budgets=[70, 23])
    args = make_inputs(2, 4, 1, 70, 64, [5, 12], torch.float16, False, gen)
    ours, ref = run_both(args, tree.ancestor_bits)
    torch.testing.assert_close(ours.float(), ref, atol=ATOL[torch.float16], rtol=0)


@pytest.mark.parametrize(
    "group, head_dim", [(1, 64), (4, 64), (8, 64), (1, 128), (4, 128), (8, 128), (4, 96)]
)
def test_gqa_and_head_dims(group, head_dim):
    gen = torch.Generator().manual_seed(group * 1000 + head_dim)
    bits = ancestor_bits_ref(make_parents("deep_wide", 2, 20, gen))
    args = make_inputs(2, 2 * group, 2, 20, head_dim, [1, 70], torch.float16, False, gen)
    ours, ref = run_both(args, bits)
    torch.testing.assert_close(ours.float(), ref, atol=ATOL[torch.float16], rtol=0)


@pytest.mark.parametrize("in_cache", [False, True], ids=["separate", "in_cache"])
@pytest.mark.parametrize("num_splits", [2, 5])
def test_split_cache(num_splits, in_cache):
    """Flash-decoding path: chunks past a request's cache length are empty and must merge as
    nothing; lengths 0, odd and full in one batch."""
    gen = torch.Generator().manual_seed(num_splits)
    bits = ancestor_bits_ref(make_parents("deep_wide", 3, 12, gen))
    args = make_inputs(3, 4, 1, 12, 64, [0, 129, 300], torch.float32, in_cache, gen, capacity=300)
    ours, ref = run_both(args, bits, num_splits=num_splits)
    torch.testing.assert_close(ours, ref, atol=ATOL[torch.float32], rtol=0)


def test_multiword_bits_and_strided_out():
    """N = 100 (4 bit words per row) with a deep tree; ``out`` in the (B, N + 1, H, D) layout a
    model's output projection wants, written through its transposed view."""
    gen = torch.Generator().manual_seed(5)
    bits = ancestor_bits_ref(make_parents("chain", 1, 100, gen))
    q, k_cache, v_cache, k_tree, v_tree, lens = make_inputs(1, 2, 1, 100, 64, [17], torch.float32, False, gen)
    out = torch.empty((1, 101, 2, 64), dtype=torch.float32, device=DEVICE).transpose(1, 2)
    got = tree_attention(q, k_cache, v_cache, k_tree, v_tree, bits.to(DEVICE), lens, out=out)
    assert got.data_ptr() == out.data_ptr()
    ref = tree_attention_ref(q, k_cache, v_cache, k_tree, v_tree, bits.to(DEVICE), lens)
    torch.testing.assert_close(out, ref, atol=ATOL[torch.float32], rtol=0)


def test_invalid_arguments_name_the_argument():
    gen = torch.Generator().manual_seed(6)
    q, k_cache, v_cache, k_tree, v_tree, lens = make_inputs(1, 4, 2, 8, 64, [3], torch.float32, False, gen)
    bits = ancestor_bits_ref(make_parents("star", 1, 8, gen)).to(DEVICE)
    with pytest.raises(ValueError, match="ancestor_bits"):
        tree_attention(q, k_cache, v_cache, k_tree, v_tree, bits[:, :4], lens)
    with pytest.raises(ValueError, match="multiple of k_cache"):
        tree_attention(q[:, :3], k_cache, v_cache, k_tree, v_tree, bits, lens)
    with pytest.raises(ValueError, match="k_tree"):
        tree_attention(q, k_cache, v_cache, k_tree[:, :, :5], v_tree, bits, lens)
    with pytest.raises(ValueError, match="cache_lens"):
        tree_attention(q, k_cache, v_cache, k_tree, v_tree, bits, lens.float())
    with pytest.raises(ValueError, match="head_dim"):
        tree_attention(q[..., :32], k_cache, v_cache, k_tree, v_tree, bits, lens)


def _op_args(plan, q, k_cache, v_cache, k_tree, v_tree):
    return (q, k_cache, v_cache, k_tree, v_tree, plan.ancestor_bits, plan.cache_lens,
            plan.out, plan.part_o, plan.part_lse, 0.125, list(plan.launch))


@pytest.mark.parametrize("in_cache", [False, True], ids=["separate", "in_cache"])
@pytest.mark.parametrize("num_splits", [1, 2])
def test_opcheck(num_splits, in_cache):
    """The schema (every written tensor marked), the fake and the op agree: on the CPU through
    the interpreter, compiled with CUDA."""
    gen = torch.Generator().manual_seed(7)
    bits = ancestor_bits_ref(make_parents("deep_wide", 2, 5, gen)).to(DEVICE)
    args = make_inputs(2, 2, 1, 5, 64, [0, 70], torch.float32, in_cache, gen, capacity=70)
    plan = plan_tree_attention(*args[:5], bits, args[5], num_splits=num_splits)
    assert plan.launch.num_splits == num_splits
    torch.library.opcheck(torch.ops.bastion_ext.tree_attention.default, _op_args(plan, *args[:5]))


def test_fake_checks_the_workspace():
    """On meta tensors the op runs its fake, which ties the partials to the launch's splits."""
    gen = torch.Generator().manual_seed(8)
    bits = ancestor_bits_ref(make_parents("chain", 1, 3, gen))
    args = make_inputs(1, 2, 1, 3, 64, [200], torch.float32, False, gen)
    plan = plan_tree_attention(*args[:5], bits.to(DEVICE), args[5], num_splits=2)
    meta = [t.to("meta") if isinstance(t, torch.Tensor) else t for t in _op_args(plan, *args[:5])]
    torch.ops.bastion_ext.tree_attention(*meta)
    meta[8] = meta[8][:, :, :-1]
    with pytest.raises(ValueError, match="part_o"):
        torch.ops.bastion_ext.tree_attention(*meta)


@pytest.mark.parametrize("in_cache", [False, True], ids=["separate", "in_cache"])
def test_plan_is_run_by_every_layer(monkeypatch, in_cache):
    """A plan checks once: three layers of the same shapes run on it without a check or an
    allocation (the same output and partials), each matching the reference; a layer of other
    shapes is refused."""
    gen = torch.Generator().manual_seed(9)
    bits = ancestor_bits_ref(make_parents("deep_wide", 2, 9, gen)).to(DEVICE)
    lens = [40, 3]
    first = make_inputs(2, 4, 2, 9, 64, lens, torch.float32, in_cache, gen, capacity=128)
    plan = plan_tree_attention(*first[:5], bits, first[5], num_splits=2)
    assert plan.launch.num_splits == 2
    buffers = [t.data_ptr() for t in (plan.out, plan.part_o, plan.part_lse)]
    checks = []
    monkeypatch.setattr(attention_plan, "check_tree_attention_args", lambda *a: checks.append(a))
    for _ in range(3):
        q, k_cache, v_cache, k_tree, v_tree, _lens = make_inputs(2, 4, 2, 9, 64, lens, torch.float32, in_cache, gen, capacity=128)
        got = run_tree_attention(plan, q, k_cache, v_cache, k_tree, v_tree)
        assert got is plan.out
        ref = tree_attention_ref(q, k_cache, v_cache, k_tree, v_tree, bits, first[5])
        torch.testing.assert_close(got, ref, atol=ATOL[torch.float32], rtol=0)
    assert not checks
    assert [t.data_ptr() for t in (plan.out, plan.part_o, plan.part_lse)] == buffers
    with pytest.raises(ValueError, match="plan again"):
        run_tree_attention(plan, q[:, :2], k_cache, v_cache, k_tree, v_tree)


@pytest.mark.cuda
@pytest.mark.parametrize("in_cache", [False, True], ids=["separate", "in_cache"])
@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("n_nodes", [1, 16, 100, 300])
def test_cuda_bf16_grid(n_nodes, head_dim, group, in_cache):
    """bf16 on the GPU: the error against the fp32 oracle must stay within twice PyTorch's own
    bf16 SDPA error on the same inputs, plus 1e-3."""
    gen = torch.Generator().manual_seed(n_nodes * 100 + head_dim + group)
    bits = ancestor_bits_ref(make_parents("deep_wide", 3, n_nodes, gen)).to(DEVICE)
    args = make_inputs(3, 2 * group, 2, n_nodes, head_dim, [0, 1001, 4096], torch.bfloat16, in_cache, gen)
    ours = tree_attention(*args[:5], bits, args[5])
    ref = tree_attention_ref(*args[:5], bits, args[5])
    torch_bf16 = tree_attention_ref(*args[:5], bits, args[5], compute_dtype=torch.bfloat16)
    torch_err = (torch_bf16.float() - ref).abs().max().item()
    our_err = (ours.float() - ref).abs().max().item()
    assert our_err <= 2 * torch_err + 1e-3, (our_err, torch_err)
