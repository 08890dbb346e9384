"""Mixed-length batches at full size (issue 19's bar; the suite's tests/test_mixed_lengths.py
is the small version): 8 prompts of 1 to 500 tokens, batches of 2, 4 and 8, every strategy,
fp32 and bf16, 10 repeats (each a rotation of the prompts, so other lengths meet): no error, and
in fp32 every request's tokens are its own batch-1 ar's. About 10 minutes on a 2-core CPU.

    HF_HUB_OFFLINE=1 python scripts/check_mixed_lengths.py
"""
import copy
import time

import torch

from bastion.models import load_target
from bastion.drafter import load_drafter
from bastion.engine import STRATEGIES, GenerationConfig, generate, generate_batch
from bastion_ext.latency import LatencyModel, ModelSpec, RooflineModel
base, tok = load_target(None, dtype=torch.float32)
spec = ModelSpec.from_hf_config(base.config, element_bytes=4)
# A plausible 2-core roofline, not a calibration: losslessness needs no accuracy.
latency = LatencyModel(RooflineModel(spec, peak_flops=2e11, bandwidth=1e10, overhead=0.03), draft_seconds=0.01)
text = tok("The rain falls softly on the old stone bridge while the town sleeps. " * 40, add_special_tokens=False)["input_ids"]
lengths = [1, 5, 17, 60, 128, 250, 380, 500]
prompts = [text[:n] for n in lengths]
N = 4
t0 = time.time(); runs = 0
for dtype in (torch.float32, torch.bfloat16):
    model = base if dtype == torch.float32 else copy.deepcopy(base).to(dtype)
    drafter = load_drafter(None, model)
    ar = GenerationConfig(strategy="ar", max_new_tokens=N, stop_on_eos=False)
    singles = [generate(model, p, ar).tokens for p in prompts]
    for rep in range(10):
        for strategy in STRATEGIES:
            config = GenerationConfig(strategy=strategy, max_new_tokens=N, stop_on_eos=False, budget=8)
            for batch in (2, 4, 8):
                order = prompts[rep % 8:] + prompts[:rep % 8]  # each repeat mixes other lengths together
                want = singles[rep % 8:] + singles[:rep % 8]
                res = generate_batch(model, order[:batch], config, drafter=drafter, latency=latency)
                runs += 1
                assert all(len(r.tokens) == N for r in res), (dtype, strategy, batch, rep)
                if dtype == torch.float32:
                    assert [r.tokens for r in res] == want[:batch], (strategy, batch, rep)
    print(dtype, "ok after", runs, "batches", round(time.time() - t0), "s", flush=True)
print("mixed-length bar: PASS", runs, "generate_batch calls, prompts of", lengths, "tokens")
