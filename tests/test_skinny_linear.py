"""skinny_linear: the op against the float64 reference within the fp32 summation bound, over
random and adversarial shapes; a row's output the same bits alone or in any batch; non-finite
inputs; bad inputs naming the argument; opcheck and the fake; and ``use_skinny_linear``, the
model's linear layers routed to it for few rows only."""

import pytest
import torch

from bastion_ext import ops
from bastion_ext.cpu_linear import SKINNY_MAX_ROWS, use_skinny_linear
from bastion_ext.reference import skinny_linear_error_bound, skinny_linear_ref


def random_case(seed: int):
    """x (M, K), weight (N, K): M from 0 to 40, K and N small and awkward (K % 8 and N % 3 of
    every value, K = 0 and 1 included), magnitudes spread over six orders."""
    gen = torch.Generator().manual_seed(seed)
    randint = lambda lo, hi: int(torch.randint(lo, hi, (), generator=gen))  # noqa: E731
    rows, features, outputs = randint(0, 41), randint(0, 70), randint(1, 12)
    scale = 10.0 ** randint(-3, 4)
    x = torch.randn(rows, features, generator=gen) * scale
    weight = torch.randn(outputs, features, generator=gen)
    return x, weight


@pytest.mark.parametrize("seed", range(300))
def test_skinny_linear_is_the_dot_product_within_the_fp32_bound(seed):
    x, weight = random_case(seed)
    out = ops.skinny_linear(x, weight)
    assert out.shape == (x.shape[0], weight.shape[0]) and out.dtype == torch.float32
    error = (out.double() - skinny_linear_ref(x, weight)).abs()
    assert (error <= skinny_linear_error_bound(x, weight)).all()


@pytest.mark.parametrize("seed", range(40))
def test_a_rows_output_does_not_depend_on_the_rows_beside_it(seed):
    """Every row alone, and the rows in reverse order, give the batch's bits (docs/ops.md)."""
    x, weight = random_case(seed)
    out = ops.skinny_linear(x, weight)
    for m in range(x.shape[0]):
        assert torch.equal(ops.skinny_linear(x[m:m + 1], weight), out[m:m + 1])
    assert torch.equal(ops.skinny_linear(x.flip(0), weight), out.flip(0))


def test_real_layer_shapes_and_a_strided_input():
    """An lm_head and an MLP projection of the embedded model's sizes; a transposed x is copied
    by the wrapper, not misread."""
    gen = torch.Generator().manual_seed(7)
    for rows, features, outputs in ((1, 576, 4099), (5, 576, 1536), (8, 1536, 576)):
        x, weight = torch.randn(rows, features, generator=gen), torch.randn(outputs, features, generator=gen)
        out = ops.skinny_linear(x, weight)
        assert torch.allclose(out, x @ weight.T, rtol=1e-5, atol=1e-4)
    weight = torch.randn(9, 576, generator=gen)
    strided = torch.randn(576, 3, generator=gen).T
    assert torch.equal(ops.skinny_linear(strided, weight), ops.skinny_linear(strided.contiguous(), weight))


def test_a_nan_or_inf_stays_in_its_row():
    x, weight = torch.randn(4, 20), torch.randn(5, 20)
    clean = ops.skinny_linear(x, weight)
    for bad in (float("nan"), float("inf")):
        dirty = x.clone()
        dirty[2, 11] = bad
        out = ops.skinny_linear(dirty, weight)
        want = skinny_linear_ref(dirty, weight)
        assert torch.equal(out.isnan(), want.isnan()) and torch.equal(out.isinf(), want.isinf())
        assert not out[2].isfinite().any()
        assert torch.equal(out[[0, 1, 3]], clean[[0, 1, 3]])


@pytest.mark.parametrize("args, argument", [
    ((torch.randn(3), torch.randn(4, 3)), "x"),
    ((torch.randn(2, 2, 3), torch.randn(4, 3)), "x"),
    ((torch.randn(2, 3, dtype=torch.float64), torch.randn(4, 3)), "x"),
    ((torch.randn(2, 3), torch.randn(4, 3, dtype=torch.bfloat16)), "weight"),
    ((torch.randn(2, 3), torch.randn(3)), "weight"),
    ((torch.randn(2, 3), torch.randn(3, 4).T), "weight"),
    ((torch.randn(2, 3), torch.randn(4, 5)), "weight"),
])
def test_bad_inputs_name_the_argument(args, argument):
    with pytest.raises(ValueError, match=rf"^{argument}\b"):
        ops.skinny_linear(*args)
    with pytest.raises(ValueError, match=rf"^{argument}\b"):  # the fake checks the same, without data
        torch.ops.bastion_ext.skinny_linear(*(t.to("meta") for t in args))


def test_skinny_linear_opcheck():
    x, weight = random_case(3)
    torch.library.opcheck(torch.ops.bastion_ext.skinny_linear.default, (torch.randn(5, 17), torch.randn(6, 17)))
    torch.library.opcheck(torch.ops.bastion_ext.skinny_linear.default, (x, weight))


def test_a_models_linear_layers_take_it_for_few_rows_only():
    """fp32 CPU layers are routed, a bf16 one is not; up to SKINNY_MAX_ROWS rows the output is
    the op's (bias added), above them and under autograd it is F.linear's, bit for bit."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(24, 40), torch.nn.Linear(40, 16, bias=False), torch.nn.Linear(16, 8).bfloat16())
    assert use_skinny_linear(model) == 2
    first, second, third = model
    for rows in (1, 3, SKINNY_MAX_ROWS):
        x = torch.randn(1, rows, 24)
        with torch.inference_mode():
            out = first(x)
        assert torch.equal(out, (ops.skinny_linear(x.reshape(rows, 24), first.weight) + first.bias).reshape(1, rows, 40))
        with torch.inference_mode():
            assert torch.equal(second(out), ops.skinny_linear(out.reshape(rows, 40), second.weight).reshape(1, rows, 16))
    x = torch.randn(SKINNY_MAX_ROWS + 1, 24)
    with torch.inference_mode():
        assert torch.equal(first(x), torch.nn.functional.linear(x, first.weight, first.bias))
    x = torch.randn(2, 24, requires_grad=True)
    first(x).sum().backward()  # autograd: F.linear's path, which has a backward
    assert x.grad is not None and first.weight.grad is not None
    assert third(torch.randn(2, 16, dtype=torch.bfloat16)).dtype == torch.bfloat16
