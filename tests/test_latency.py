"""bastion_ext.latency: roofline shape, offline calibration, online correction, tables, errors."""

import math
from types import SimpleNamespace

import pytest
import torch

from bastion_ext.latency import (
    DEVICES,
    DeviceSpec,
    LatencyModel,
    ModelSpec,
    OnlineCorrection,
    RooflineModel,
    RoundTimer,
    fit_roofline,
    measure_device,
    measure_verify_grid,
    rmse,
)

# SmolLM2-135M in fp32 (the embedded target) and a Qwen3-8B-sized model in bf16.
SMOLLM2 = ModelSpec(30, 576, 9, 3, 64, 1536, 49152, element_bytes=4)
QWEN3_8B = ModelSpec(36, 4096, 32, 8, 128, 12288, 151936, element_bytes=2)
# A CPU-like device that the "measured" timings below come from.
CPU_TRUTH = RooflineModel(SMOLLM2, peak_flops=90e9, bandwidth=9e9, overhead=0.03)
NS = [1, 2, 4, 8, 16, 24, 32, 48, 64]
CS = [64, 256, 1024]


def grid_points(ns=NS, cs=CS):
    n = torch.tensor(ns, dtype=torch.float64).repeat(len(cs))
    c = torch.tensor(cs, dtype=torch.float64).repeat_interleave(len(ns))
    return n, c


def noisy_times(truth, n, c, rel_noise=0.02, seed=0):
    generator = torch.Generator().manual_seed(seed)
    noise = 1.0 + rel_noise * torch.randn(n.shape, generator=generator, dtype=torch.float64)
    return truth.forward_seconds(n, c) * noise


def test_roofline_monotone_in_n_and_c():
    for device in (DEVICES["H100"], DEVICES["A6000"]):
        model = RooflineModel.from_device(QWEN3_8B, device, overhead=1e-4)
        ns = torch.arange(1, 4097, dtype=torch.float64)
        for c in (0, 512, 8192):
            t = model.forward_seconds(ns, c)
            assert bool((t[1:] > t[:-1]).all())
        cs = torch.arange(0, 32769, 256, dtype=torch.float64)
        for n in (1, 64, 1024):
            t = model.forward_seconds(n, cs)
            assert bool((t[1:] > t[:-1]).all())


def test_numbers_and_tensors_give_the_same_seconds():
    # The floor asks for scalars every round, in floats; tables come from tensors. Both paths
    # agree to the last bit, a short forward's own overhead included.
    short = RooflineModel(SMOLLM2, 90e9, 9e9, overhead=0.03, overlap=0.3, short_tokens=2, short_overhead=0.011)
    latency = LatencyModel(short, draft_seconds=0.01, aux_seconds=1e-3, aux_per_node_seconds=1e-5)
    for n, c in [(1, 0), (2, 37.5), (3, 1024), (700, 65)]:
        number = short.forward_seconds(n, c, batch=1)
        assert isinstance(number, float) and number == float(short.forward_seconds(torch.tensor([n]), c)[0])
        assert latency.round_seconds(n, c) == float(latency.round_seconds(torch.tensor([n]), c)[0])
    assert latency.plain_modelled(37.5, 2) == float(latency.aux_seconds + short.forward_seconds(torch.tensor([2]), 37.5, 2)[0])


def test_roofline_regimes_follow_machine_balance():
    model = RooflineModel.from_device(QWEN3_8B, DEVICES["H100"])
    # bf16 weights: 1 FLOP per weight byte per token; H100's balance is ~295 FLOP/byte.
    assert not bool(model.compute_bound(64, 1024))
    assert bool(model.compute_bound(2048, 1024))
    # Memory-bound: a 32-token verify costs about what one token does; compute-bound: linear.
    assert float(model.forward_seconds(32, 1024) / model.forward_seconds(1, 1024)) < 1.1
    assert float(model.forward_seconds(4096, 1024) / model.forward_seconds(2048, 1024)) == pytest.approx(2.0, rel=0.1)
    # One token at a long context reads much KV cache: bytes grow with c, compute barely.
    assert float(model.forward_seconds(1, 32768) / model.forward_seconds(1, 0)) > 1.2


def test_model_spec_from_config_duck_typed():
    config = SimpleNamespace(
        num_hidden_layers=30, hidden_size=576, num_attention_heads=9, num_key_value_heads=3,
        intermediate_size=1536, vocab_size=49152, torch_dtype="float32",
    )
    assert ModelSpec.from_hf_config(config) == SMOLLM2
    config.num_key_value_heads = None
    assert ModelSpec.from_hf_config(config, element_bytes=2).n_kv_heads == 9


@pytest.mark.parametrize(
    "truth",
    [
        CPU_TRUTH,
        # Shaped like the embedded target's fit on this machine: compute and memory barely
        # overlap, and forwards of <= 2 tokens skip the matrix-matrix kernels' fixed cost.
        RooflineModel(SMOLLM2, 270e9, 17e9, 0.017, overlap=0.25, short_tokens=2, short_overhead=0.001),
    ],
)
def test_calibration_recovers_known_coefficients(truth):
    n, c = grid_points()
    measured = noisy_times(truth, n, c, rel_noise=0.01)
    fit = fit_roofline(SMOLLM2, n, c, measured, start=RooflineModel.from_device(SMOLLM2, DEVICES["H100"]))
    assert fit.model.peak_flops == pytest.approx(truth.peak_flops, rel=0.1)
    assert fit.model.bandwidth == pytest.approx(truth.bandwidth, rel=0.1)
    assert fit.model.overlap == truth.overlap
    assert float(fit.model.overhead_of(64)) == pytest.approx(truth.overhead, rel=0.15)
    assert float(fit.model.overhead_of(1)) == pytest.approx(float(truth.overhead_of(1)), rel=0.15, abs=2e-3)
    assert fit.rmse_after < 0.02 * float(measured.mean())
    assert fit.rmse_after < fit.rmse_before


def test_calibration_cuts_heldout_rmse_on_misspecified_device():
    n, c = grid_points()
    measured = noisy_times(CPU_TRUTH, n, c, rel_noise=0.03, seed=1)
    held_out = torch.arange(len(n)) % 3 == 0
    # The datasheet of the wrong device entirely, and a CPU probe that is 2x optimistic.
    for start in (
        RooflineModel.from_device(SMOLLM2, DEVICES["A6000"]),
        RooflineModel(SMOLLM2, 2 * CPU_TRUTH.peak_flops, 2 * CPU_TRUTH.bandwidth),
    ):
        fit = fit_roofline(SMOLLM2, n[~held_out], c[~held_out], measured[~held_out], start=start)
        before = rmse(start, n[held_out], c[held_out], measured[held_out])
        after = rmse(fit.model, n[held_out], c[held_out], measured[held_out])
        assert after <= 0.2 * before, (before, after)


def test_online_correction_tracks_step_change_within_window():
    correction = OnlineCorrection(window=7)
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        correction.observe(16, 0.1 * (1 + 0.02 * float(torch.randn((), generator=generator))), 0.1)
    assert float(correction.factors(16)[15]) == pytest.approx(1.0, abs=0.03)
    rounds = 0
    while abs(float(correction.factors(16)[15]) - 1.5) > 0.05:
        correction.observe(16, 0.15 * (1 + 0.02 * float(torch.randn((), generator=generator))), 0.1)
        rounds += 1
        assert rounds <= 7 // 2 + 1, "did not follow a 1.5x slow-down within half a window"


def test_online_correction_ignores_a_single_outlier():
    correction = OnlineCorrection(window=7)
    for _ in range(10):
        correction.observe(8, 0.1, 0.1)
    correction.observe(8, 5.0, 0.1)  # a 50x stall (GC pause, page fault)
    assert float(correction.factors(8)[7]) == pytest.approx(1.0, abs=1e-9)


def test_online_correction_factor_is_the_tables_value_in_host_floats():
    """``factor(n)`` (the floor's per-round path) equals ``factors(n)[-1]`` (the tables') for
    every n, with no data, one bucket, and random buckets with gaps between them."""
    generator = torch.Generator().manual_seed(3)
    for trial in range(40):
        correction = OnlineCorrection(window=5)
        buckets = torch.randperm(11, generator=generator)[: trial % 6].tolist()
        for bucket in buckets:
            for _ in range(1 + trial % 4):
                n = (1 << bucket) + int(torch.randint(0, 1 << bucket, (), generator=generator))
                correction.observe(n, float(torch.rand((), generator=generator)) + 0.05, 0.5)
        table = correction.factors(2048)
        for n in (1, 2, 3, 5, 7, 8, 31, 100, 1000, 2048):
            assert correction.factor(n) == pytest.approx(float(table[n - 1]), rel=1e-12), (trial, n)


def test_online_correction_interpolates_between_buckets():
    correction = OnlineCorrection()
    assert torch.equal(correction.factors(5), torch.ones(5, dtype=torch.float64))
    for _ in range(3):
        correction.observe(1, 2.0, 1.0)
        correction.observe(32, 1.0, 1.0)
    factors = correction.factors(64)
    assert float(factors[0]) == pytest.approx(2.0)
    assert float(factors[63]) == pytest.approx(1.0)
    assert bool((factors[1:] <= factors[:-1] + 1e-12).all())  # monotone between the two


def test_latency_table_shapes_and_correction():
    latency = LatencyModel(CPU_TRUTH, draft_seconds=0.01, aux_seconds=1e-3, aux_per_node_seconds=1e-5)
    one = latency.latency_table(256, 48)
    assert one.shape == (1, 48) and one.dtype == torch.float32
    assert bool((one[0, 1:] >= one[0, :-1]).all()) and bool((one > 0).all())
    # T(n) = T_draft + T_aux(n) + T_verify of n nodes plus the root.
    expected = 0.01 + 1e-3 + 1e-5 * 5 + float(CPU_TRUTH.forward_seconds(6, 256))
    assert float(one[0, 4]) == pytest.approx(expected, rel=1e-6)
    rows = latency.latency_table([64, 1024], 48)
    assert rows.shape == (2, 48) and bool((rows[1] > rows[0]).all())
    for _ in range(4):
        latency.observe(8, 256, 2 * float(latency.round_seconds(8, 256)))
    assert float(latency.latency_table(256, 48)[0, 7]) == pytest.approx(2 * float(one[0, 7]), rel=1e-5)
    batch = latency.batch_latency_table([64, 256, 1024], 96)
    assert batch.shape == (96,) and bool((batch[1:] >= batch[:-1]).all())


def test_measure_verify_grid_sweeps_the_grid_c_major():
    calls = []

    def forward(n, c):
        calls.append((n, c))
        torch.mm(torch.ones(8 * n, 32), torch.ones(32, 32))

    grid = measure_verify_grid(forward, [1, 4], [0, 16], repeats=3, warmup=1)
    assert grid.seconds.shape == (2, 2) and bool((grid.seconds > 0).all())
    assert calls == [(1, 0), (4, 0), (1, 16), (4, 16)] * 4
    n, c, s = grid.points()
    assert n.tolist() == [1, 4, 1, 4] and c.tolist() == [0, 0, 16, 16] and torch.equal(s, grid.seconds.reshape(-1))


def test_measure_device_and_round_timer_on_cpu():
    spec = measure_device("cpu", repeats=2)
    assert spec.peak_flops > 1e8 and spec.bandwidth > 1e8
    timer = RoundTimer("cpu")
    timer.start()
    torch.mm(torch.ones(64, 64), torch.ones(64, 64))
    timer.stop(("round", 0))
    (tag, seconds), = timer.ready()
    assert tag == ("round", 0) and seconds > 0 and timer.ready() == []


@pytest.mark.cuda
def test_probe_round_timer_and_table_on_cuda():
    spec = measure_device("cuda", repeats=2)
    assert spec.peak_flops > 1e12 and spec.bandwidth > 1e11
    timer = RoundTimer("cuda")
    a = torch.ones(2048, 2048, device="cuda")
    timer.start()
    torch.mm(a, a)
    timer.stop("round")
    torch.cuda.synchronize()
    (tag, seconds), = timer.ready()
    assert tag == "round" and seconds > 0
    table = LatencyModel(CPU_TRUTH).latency_table([64, 128], 16, device="cuda")
    assert table.device.type == "cuda" and table.shape == (2, 16)
    assert torch.equal(table.cpu(), LatencyModel(CPU_TRUTH).latency_table([64, 128], 16))


@pytest.mark.parametrize(
    "call, argument",
    [
        (lambda: fit_roofline(SMOLLM2, [1, 2, 4], [0, 0, 0], [0.1, -0.1, 0.2]), "seconds"),
        (lambda: fit_roofline(SMOLLM2, [1, 2, 4], [0, 0, 0], [0.1, math.nan, 0.2]), "seconds"),
        (lambda: fit_roofline(SMOLLM2, [], [], []), "n_tokens"),
        (lambda: fit_roofline(SMOLLM2, [1, 2], [0, 0], [0.1, 0.2]), "seconds"),
        (lambda: fit_roofline(SMOLLM2, [1, 2, 4], [0, 0], [0.1, 0.2, 0.3]), "context_lens"),
        (lambda: measure_verify_grid(lambda n, c: None, [], [0]), "ns"),
        (lambda: measure_verify_grid(lambda n, c: None, [1], []), "cs"),
        (lambda: CPU_TRUTH.forward_seconds(0, 16), "n_tokens"),
        (lambda: CPU_TRUTH.forward_seconds(4, -1), "context_len"),
        (lambda: OnlineCorrection().observe(4, -0.1, 0.1), "measured_seconds"),
        (lambda: OnlineCorrection().observe(4, 0.1, math.nan), "predicted_seconds"),
        (lambda: OnlineCorrection(window=2), "window"),
        (lambda: LatencyModel(CPU_TRUTH).latency_table(64, 0), "n_max"),
        (lambda: LatencyModel(CPU_TRUTH).latency_table([64, math.nan], 4), "context_lens"),
        (lambda: LatencyModel(CPU_TRUTH, draft_seconds=-1.0), "draft_seconds"),
        (lambda: DeviceSpec("x", 1e12, -1.0), "bandwidth"),
        (lambda: RooflineModel(SMOLLM2, math.inf, 1e9), "peak_flops"),
        (lambda: ModelSpec(0, 576, 9, 3, 64, 1536, 49152), "n_layers"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_argument(call, argument):
    with pytest.raises(ValueError, match=argument):
        call()


@pytest.mark.model
def test_real_model_smoke(smollm2):
    """The engine-facing path on the embedded target: its config and a tiny timed grid (times on
    a shared CI machine are too noisy to assert a fit on; bench/calibrate_cpu.py does that)."""
    from transformers import DynamicCache

    model, _ = smollm2
    spec = ModelSpec.from_hf_config(model.config, element_bytes=4)
    assert (spec.n_layers, spec.hidden_size, spec.n_heads, spec.n_kv_heads, spec.head_dim, spec.vocab_size) == (30, 576, 9, 3, 64, 49152)
    device = next(model.parameters()).device
    cache_lengths = []

    def forward(n, c):
        with torch.inference_mode():
            cache = DynamicCache()
            if c:
                model(input_ids=torch.zeros(1, c, dtype=torch.long, device=device), cache=cache, use_cache=True)
            model(input_ids=torch.zeros(1, n, dtype=torch.long, device=device), cache=cache, use_cache=True)
            cache_lengths.append(cache.get_seq_length())

    grid = measure_verify_grid(forward, [1, 4], [0, 8], repeats=1, warmup=0)
    assert grid.seconds.shape == (2, 2) and bool((grid.seconds > 0).all())
    assert cache_lengths == [1, 4, 9, 12]
