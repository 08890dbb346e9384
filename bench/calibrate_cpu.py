"""Calibrate the roofline latency model on the embedded SmolLM2-135M target on this CPU.

Times verify-shaped forwards (n new tokens over a DynamicCache of c tokens, fp32, 2 threads,
median of repeated sweeps of the grid after a warm-up sweep) over a grid, fits the roofline's effective FLOP/s,
bandwidth and overhead on a train subset of the points, and reports the RMSE of the
uncalibrated model (the measured device probe, no overhead) and the calibrated one on the
held-out points. Writes bench/results/calibration_cpu_smollm2.json.

    python bench/calibrate_cpu.py [--repeats 5] [--statistic median|min] [--out PATH]

The machine these sessions share is often busy (load averages of 100+ from other jobs): then
run it as ``chrt -f 1 python bench/calibrate_cpu.py`` so that the timed forwards are not
time-sliced against everything else (about a minute of near-exclusive CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "python")]

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bastion_ext.latency import ModelSpec, RooflineModel, measure_device, measure_verify_grid  # noqa: E402
from roofline_fit import fit_held_out  # noqa: E402

NS = (1, 2, 4, 8, 16, 24, 32, 48, 64)
CS = (64, 256, 1024)


def cache_forward(model, vocab_size: int):
    """forward_fn(n, c) for measure_verify_grid: one forward of n tokens over a c-token cache.

    One cache per c is prefilled on first use (random tokens: the cost does not depend on
    their values) and cropped back to c after every forward, so each timed call sees exactly
    c cached tokens and no sweep pays for a prefill.
    """
    from transformers import DynamicCache

    generator = torch.Generator().manual_seed(0)
    caches = {}

    def forward(n: int, c: int) -> None:
        with torch.inference_mode():
            if c not in caches:
                caches[c] = DynamicCache()
                model(input_ids=torch.randint(vocab_size, (1, c), generator=generator), cache=caches[c], use_cache=True)
            tokens = torch.randint(vocab_size, (1, n), generator=generator)
            model(input_ids=tokens, cache=caches[c], use_cache=True)
            caches[c].crop(-n)

    return forward


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--statistic", choices=("median", "min"), default="median", help="which per-point statistic the saved calibration is fitted to")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "calibration_cpu_smollm2.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    from bastion.models import load_target

    model, _ = load_target(device="cpu", dtype=torch.float32)
    load_s = time.perf_counter() - started
    spec = ModelSpec.from_hf_config(model.config, element_bytes=4)
    device = measure_device("cpu", torch.float32)
    uncalibrated = RooflineModel.from_device(spec, device)
    print(f"loaded in {load_s:.1f} s; probe: {device.peak_flops / 1e9:.1f} GFLOP/s, {device.bandwidth / 1e9:.2f} GB/s")

    load_before = os.getloadavg()
    grid = measure_verify_grid(cache_forward(model, spec.vocab_size), NS, CS, repeats=args.repeats, warmup=1)
    load_after = os.getloadavg()
    fits = {statistic: fit_held_out(spec, grid, uncalibrated, statistic) for statistic in ("median", "min")}
    primary = fits[args.statistic]
    print(f"{'c':>5} {'n':>3} {'median ms':>10} {'min ms':>8} {'uncal ms':>9} {'cal ms':>8}  split   (calibrated on the {args.statistic})")
    # Both statistics' points come in the same grid order.
    for row, mid, low in zip(primary["points"], fits["median"]["points"], fits["min"]["points"]):
        print(
            f"{row['c']:>5} {row['n']:>3} {1e3 * mid['measured_s']:>10.1f} {1e3 * low['measured_s']:>8.1f} "
            f"{1e3 * row['uncalibrated_s']:>9.1f} {1e3 * row['calibrated_s']:>8.1f}  {'held-out' if row['held_out'] else 'train'}"
        )
    for statistic, fit in fits.items():
        r = fit["held_out_rmse_s"]
        print(
            f"{statistic:>6} times: held-out RMSE uncalibrated {1e3 * r['uncalibrated']:.1f} ms, calibrated "
            f"{1e3 * r['calibrated']:.1f} ms ({100 * r['reduction']:.0f}% lower); fitted "
            f"{fit['peak_flops'] / 1e9:.1f} GFLOP/s, {fit['bandwidth'] / 1e9:.2f} GB/s, overlap {fit['overlap']:.2f}, "
            f"overhead {1e3 * fit['overhead']:.1f} ms ({1e3 * fit['short_overhead']:.1f} ms up to {fit['short_tokens']} tokens)"
        )
    result = {
        "command": "python bench/calibrate_cpu.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "threads": args.threads,
            # The machine is shared: the 1/5/15-minute load averages around the sweep say how busy.
            "loadavg_before": load_before,
            "loadavg_after": load_after,
            # On a busy shared host the sweep is best run under a real-time policy (chrt -f 1):
            # recorded so that a reader knows which way these times were taken.
            "scheduler": {os.SCHED_OTHER: "SCHED_OTHER", os.SCHED_FIFO: "SCHED_FIFO", os.SCHED_RR: "SCHED_RR"}.get(os.sched_getscheduler(0), "other"),
        },
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "model": {"name": "SmolLM2-135M-Instruct (GGUF Q4_1 dequantized, fp32)", **spec.__dict__},
        "probe": {"peak_flops": device.peak_flops, "bandwidth": device.bandwidth},
        "held_out": "grid points with (index of n + index of c) % 3 == 0",
        "calibrated_on": args.statistic,
        "calibrated": {key: primary[key] for key in ("peak_flops", "bandwidth", "overhead", "overlap", "short_tokens", "short_overhead")},
        "fits": fits,
        "grid": {**grid.to_dict(), "repeats": args.repeats, "warmup": 1},
        "runtime_s": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out} ({result['runtime_s']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
