"""One ``drafter.draft`` call's time: median of 15 after 3 warm-ups, batch 1 and 4, a context
of 256 random bf16 features, the embedded target in bf16. Run with OMP_NUM_THREADS=1 on a
shared CPU.

    HF_HUB_OFFLINE=1 python bench/bench_draft.py default path/to/other_drafter
"""

import sys
import time

import torch

from bastion.drafter import load_drafter
from bastion.models import load_target

CONTEXT, REPEATS = 256, 15

target, _ = load_target(None, dtype=torch.bfloat16)
for path in sys.argv[1:] or ["default"]:
    drafter = load_drafter(None if path == "default" else path, target)
    for batch in (1, 4):
        state = drafter.new_state(batch)
        drafter.extend(state, torch.randn(batch, CONTEXT, drafter.feature_size, dtype=torch.bfloat16),
                       torch.arange(CONTEXT).expand(batch, CONTEXT))
        roots, positions = torch.full((batch,), 100), torch.full((batch,), CONTEXT)
        for _ in range(3):
            drafter.draft(state, roots, positions)
        seconds = []
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            drafter.draft(state, roots, positions)
            seconds.append(time.perf_counter() - t0)
        print(f"{path}: {drafter.config.num_hidden_layers} layers, batch {batch}: draft {sorted(seconds)[REPEATS // 2] * 1e3:.2f} ms (median)")
