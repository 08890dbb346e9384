"""Comparing sampled outputs: at T > 0 two runs with one seed draw every token with the same
uniform, so their tokens are equal except where the uniform lies within rounding of an end of
its token's CDF interval (a verify forward and a plain step round the CDF differently, about
1e-6 in fp32; see ``bastion.engine.divergence``). A difference anywhere else is a bug."""

from bastion.engine import GenerationConfig
from bastion.engine.divergence import first_divergence


def assert_equal_up_to_sampling_rounding(model, prompts: list[list[int]], expected: list[list[int]],
                                         got: list[list[int]], config: GenerationConfig, label: str = "") -> None:
    """Each request's ``got`` tokens equal its ``expected`` (a reference run: ``ar``, or the
    same strategy another way), or part from them first at a token whose uniform is within the
    step-vs-forward CDF difference of its interval's end. The request index (the uniforms'
    key) is the position in ``prompts``, as generate_batch numbers them."""
    sampler = config.sampler()
    assert len(got) == len(expected) == len(prompts), label
    for request, (ids, want, have) in enumerate(zip(prompts, expected, got)):
        if have == want:
            continue
        divergence = first_divergence(model, ids, want, have, sampler=sampler, request=request)
        assert divergence is not None, f"{label} request {request}: one output is a prefix of the other"
        assert divergence.near_tie, f"{label} request {request}: {divergence.describe(model.dtype)}"
        print(f"{label} request {request}: {divergence.describe(model.dtype)}")
