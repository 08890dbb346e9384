"""The latency model at real sizes: Qwen3-8B- and Llama-3.1-8B-shaped targets (their published
config values, random bf16 weights) timed through the engine's verify path on this GPU over
n in {1, 16, ..., 1024} verify tokens x c in {256, 1024, 4096} cached tokens, the roofline
fitted on two thirds of the points, and its RMSE before and after on the held-out third.

    python bench/calibrate_real_sizes.py [--out DIR] [--small]

Writes calibration_real_sizes.json (device, versions, command, per model: the grid, the fit,
held-out RMSE uncalibrated / calibrated and as a fraction of the mean verify time) and
calibration_real_sizes.png (measured vs modelled) to --out (default $OUT, else bench/results).
--small: two-layer models of the same families on the CPU, a small grid (the rehearsal).
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
sys.path[:0] = [str(ROOT), str(ROOT / "python"), str(Path(__file__).resolve().parent)]

from bastion_ext.latency import ModelSpec, RooflineModel, measure_device, measure_verify_grid  # noqa: E402
from roofline_fit import fit_held_out, plot_fit  # noqa: E402

# Published config values (Qwen/Qwen3-8B, meta-llama/Llama-3.1-8B config.json).
CONFIGS = {
    "Qwen3-8B": dict(model_type="qwen3", hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                     max_position_embeddings=40960, rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False),
    "Llama-3.1-8B": dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=128256,
                         max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False),
}
NS = (1, 16, 32, 64, 128, 256, 512, 1024)
CS = (256, 1024, 4096)
SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             head_dim=16, vocab_size=512)


def random_target(name: str, small: bool, device: torch.device, dtype: torch.dtype):
    """A causal LM of ``name``'s shape with random weights, built on ``device``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    values = dict(CONFIGS[name], **(SMALL if small else {}))
    config = AutoConfig.for_model(**values)
    attn = "bastion_tree" if device.type == "cuda" else "sdpa"
    if attn == "bastion_tree":
        import bastion.hf_attention  # noqa: F401  (registers the implementation)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)
    return model.eval()


def main(argv=None) -> dict:
    from bastion.calibrate import _verify_forward_fn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT"))
    parser.add_argument("--small", action="store_true", help="tiny models of the two families on the CPU (rehearsal)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    device = torch.device("cpu" if args.small or not torch.cuda.is_available() else "cuda")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    ns, cs = ((1, 4, 8, 16, 32), (16, 64)) if args.small else (NS, CS)
    probe = measure_device(device, dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    results, fits = {}, {}
    for name in CONFIGS:
        started = time.perf_counter()
        model = random_target(name, args.small, device, dtype)
        spec = ModelSpec.from_hf_config(model.config, element_bytes=torch.finfo(dtype).bits // 8)
        uncalibrated = RooflineModel.from_device(spec, probe)
        grid = measure_verify_grid(_verify_forward_fn(model, max(ns)), ns, cs, repeats=args.repeats, warmup=1, synchronize=sync)
        fits[name] = fit_held_out(spec, grid, uncalibrated, "median")
        results[name] = {"config": {k: v for k, v in (dict(CONFIGS[name], **(SMALL if args.small else {}))).items()},
                         "spec": spec.__dict__, "grid": grid.to_dict(), "fit": fits[name], "seconds": time.perf_counter() - started}
        r = fits[name]["held_out_rmse_s"]
        print(f"{name}: held-out RMSE uncalibrated {1e3 * r['uncalibrated']:.2f} ms, calibrated {1e3 * r['calibrated']:.2f} ms "
              f"= {100 * r['calibrated_over_mean']:.1f}% of the mean verify time ({1e3 * r['mean_measured_s']:.2f} ms); "
              f"{100 * r['reduction']:.0f}% lower", flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    out = Path(args.out) if args.out else ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    suffix = "_small" if args.small else ""
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.machine()} cpu, {torch.get_num_threads()} threads",
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "command": "python bench/calibrate_real_sizes.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "dtype": str(dtype).removeprefix("torch."), "probe": {"peak_flops": probe.peak_flops, "bandwidth": probe.bandwidth},
        "held_out": "grid points with (index of n + index of c) % 3 == 0", "models": results,
    }
    (out / f"calibration_real_sizes{suffix}.json").write_text(json.dumps(result, indent=1))
    plot_fit(fits, out / f"calibration_real_sizes{suffix}.png")
    print(f"wrote {out / f'calibration_real_sizes{suffix}.json'} and .png")
    return result


if __name__ == "__main__":
    main()
