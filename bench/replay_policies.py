"""Replay draft rounds through the budget policies and a latency model, offline.

For every round the tree is expanded once to the cap (best-first over the recorded top-K
lattice, exactly build_tree's step 2); every policy's tree is a prefix of it, and the
realized accepted length of every prefix follows from the target's true tokens
(``bastion_ext.surrogate.realized_accept_prefix``). Each policy plans its build from the
latency model and its own online acceptance calibration, the cut is made with build_tree's
rule (``bastion_ext.reference.cut_pop_sequence_ref``), and the round is scored as accepted + 1 tokens
over the modelled round time T(n, c). Printed per policy: mean accepted length, mean tree
size, modelled tokens/s, beside the oracle best fixed budget (best over every N, chosen with
hindsight on the same rounds). A batch experiment replays mixed batches (half easy, half hard
requests) through Bastion's batch allocation and equal per-request budgets.

Round format (what the engine records; ``load_rounds`` / ``save_rounds``): JSON Lines, one
round per line, or a ``.pt`` file holding a list of such dicts (tensors or lists)::

    {"topk_ids": [[int] * K] * P,        # the drafter's top-K token ids per position, best first
     "topk_logprobs": [[float] * K] * P, # their log-probabilities (normalised over the full vocab)
     "target_tokens": [int] * P,         # the target's greedy tokens at depths 1..P of the true continuation
     "context_len": int,                 # the root's position
     "category": str}                    # optional: prompt category, reported separately

Usage::

    python bench/replay_policies.py [--rounds 400] [--rounds-file R.jsonl] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bastion_ext.latency import DEVICES, LatencyModel, ModelSpec, RooflineModel  # noqa: E402
from bastion_ext.policy import Bastion, Fixed, GreedyStop, Policy, allocate_batch_budget  # noqa: E402
from bastion_ext.reference import cut_pop_sequence_ref, expand_lattice_ref, write_outputs_ref  # noqa: E402
from bastion_ext.surrogate import AcceptCalibrator, realized_accept_prefix, surrogate_prefix  # noqa: E402
from bastion_ext.tree import DraftTree  # noqa: E402


@dataclass
class RecordedRound:
    """One draft round: topk_ids (P, K) int64, topk_logprobs (P, K) fp32, target_tokens (P,) int64."""

    topk_ids: torch.Tensor
    topk_logprobs: torch.Tensor
    target_tokens: torch.Tensor
    context_len: int
    category: str = "all"

    @classmethod
    def from_dict(cls, row: dict) -> "RecordedRound":
        ids = torch.as_tensor(row["topk_ids"], dtype=torch.int64)
        logprobs = torch.as_tensor(row["topk_logprobs"], dtype=torch.float32)
        target = torch.as_tensor(row["target_tokens"], dtype=torch.int64)
        if ids.dim() != 2 or logprobs.shape != ids.shape or target.shape != ids.shape[:1]:
            raise ValueError(
                f"a round needs topk_ids and topk_logprobs of one shape (P, K) and target_tokens (P,), "
                f"got {tuple(ids.shape)}, {tuple(logprobs.shape)}, {tuple(target.shape)}"
            )
        return cls(ids, logprobs, target, int(row["context_len"]), str(row.get("category", "all")))

    def to_dict(self) -> dict:
        return {
            "topk_ids": self.topk_ids.tolist(),
            "topk_logprobs": self.topk_logprobs.tolist(),
            "target_tokens": self.target_tokens.tolist(),
            "context_len": self.context_len,
            "category": self.category,
        }


def load_rounds(path: str | Path) -> list[RecordedRound]:
    path = Path(path)
    if path.suffix == ".pt":
        rows = torch.load(path, weights_only=True)
    else:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    # Plain steps (the speedup floor's rounds without a drafter forward) recorded no draft.
    rows = [row for row in rows if "topk_ids" in row]
    if not rows:
        raise ValueError(f"rounds file {str(path)!r} holds no rounds")
    return [RecordedRound.from_dict(row) for row in rows]


def save_rounds(rounds: list[RecordedRound], path: str | Path) -> None:
    Path(path).write_text("".join(json.dumps(r.to_dict()) + "\n" for r in rounds))


@dataclass(frozen=True)
class SyntheticCategory:
    """A known acceptance process. The drafter's marginal at position p ranks the vocabulary
    Zipf-like, q(rank r) ∝ (r + 1) ** -a_p, with a_p = exponent * decay ** p (less sure further
    out) times a per-round log-normal factor (rounds differ in difficulty). The target's true
    token at p is drawn from q_p ** (1 / truth_temperature): 1 = a calibrated drafter, > 1 an
    overconfident one."""

    exponent: float
    decay: float = 0.9
    round_spread: float = 0.3
    truth_temperature: float = 1.0


CATEGORIES = {
    "easy": SyntheticCategory(exponent=2.5, truth_temperature=1.0),
    "hard": SyntheticCategory(exponent=1.3, truth_temperature=1.3),
}


def synthetic_rounds(category: str, n_rounds: int, seed: int = 0, positions: int = 8, vocab: int = 256, k: int = 8, context_len: int = 256) -> list[RecordedRound]:
    spec = CATEGORIES[category]
    generator = torch.Generator().manual_seed(seed)
    ranks = torch.arange(1, vocab + 1, dtype=torch.float64)
    rounds = []
    for _ in range(n_rounds):
        factor = math.exp(spec.round_spread * float(torch.randn((), generator=generator)))
        exponents = spec.exponent * factor * spec.decay ** torch.arange(positions, dtype=torch.float64)
        logq = torch.log_softmax(-exponents[:, None] * torch.log(ranks)[None, :], dim=-1)  # (P, V) by rank
        truth_rank = torch.multinomial(torch.softmax(logq / spec.truth_temperature, dim=-1), 1, generator=generator)[:, 0]
        token_of_rank = torch.stack([torch.randperm(vocab, generator=generator) for _ in range(positions)])
        rounds.append(
            RecordedRound(
                topk_ids=token_of_rank[:, :k],
                topk_logprobs=logq[:, :k].float(),
                target_tokens=token_of_rank.gather(1, truth_rank[:, None])[:, 0],
                context_len=context_len,
                category=category,
            )
        )
    return rounds


@dataclass
class ExpandedRounds:
    """Every round's tree at the cap: scores (R, N) fp32 (-inf past ``avail``), realized
    accepted length of every prefix (R, N) int32, avail (R,) int64, context_lens (R,) int64."""

    scores: torch.Tensor
    accepted: torch.Tensor
    avail: torch.Tensor
    context_lens: torch.Tensor


def expand_rounds(rounds: list[RecordedRound], n_max: int) -> ExpandedRounds:
    positions = rounds[0].topk_ids.shape[0]
    tree = DraftTree.empty(len(rounds), n_max, positions)
    for r, rnd in enumerate(rounds):
        ref = expand_lattice_ref(rnd.topk_ids.tolist(), rnd.topk_logprobs.tolist(), n_max)
        write_outputs_ref(tree, r, ref, ref.n_nodes, rnd.context_len)
    targets = torch.stack([rnd.target_tokens for rnd in rounds])
    accepted = realized_accept_prefix(targets, tree)
    return ExpandedRounds(tree.scores, accepted, tree.n_nodes.long(), torch.tensor([rnd.context_len for rnd in rounds]))


def replay_policy(policy: Policy, expanded: ExpandedRounds, latency: LatencyModel) -> dict:
    """Replay single-request rounds through one policy (it learns online as it goes)."""
    tokens = seconds = nodes = 0.0
    prefix_a = surrogate_prefix(expanded.scores)
    for r in range(expanded.scores.shape[0]):
        context = int(expanded.context_lens[r])
        args = policy.plan(context)
        cap = min(int(args.budgets[0]), int(expanded.avail[r]))
        if args.policy == "fixed":
            n = cap
        else:
            n = cut_pop_sequence_ref(expanded.scores[r, :cap].tolist(), args.policy, args.latency_table[0].tolist(), float(args.accept_scale[0]))
        accepted = expanded.accepted[r, n - 1]
        policy.observe(prefix_a[r, n - 1 : n], accepted.reshape(1))
        tokens += 1.0 + float(accepted)
        seconds += float(latency.round_seconds(n, context))
        nodes += n
    rounds = expanded.scores.shape[0]
    return {"mean_accept_len": tokens / rounds - 1.0, "mean_nodes": nodes / rounds, "tokens_per_s": tokens / seconds}


def fixed_sweep(expanded: ExpandedRounds, latency: LatencyModel, n_max: int) -> list[dict]:
    """Every fixed budget N = 1..n_max on the same rounds (vectorised)."""
    out = []
    tables = {c: latency.round_seconds(torch.arange(1, n_max + 1), c) for c in expanded.context_lens.unique().tolist()}
    table = torch.stack([tables[c] for c in expanded.context_lens.tolist()])
    for n in range(1, n_max + 1):
        cut = torch.clamp(expanded.avail, max=n)[:, None] - 1
        tokens = float((1 + expanded.accepted.gather(1, cut)).sum())
        seconds = float(table.gather(1, cut).sum())
        out.append({"n": n, "mean_accept_len": tokens / len(cut) - 1, "mean_nodes": float(cut.double().mean()) + 1, "tokens_per_s": tokens / seconds})
    return out


def replay_batches(expanded: dict[str, ExpandedRounds], latency: LatencyModel, n_max: int, batch: int) -> dict:
    """Mixed batches (half from each category) through Bastion's batch allocation and through
    equal per-request budgets N = 1..n_max; modelled by the batched latency T_batch(M)."""
    names = sorted(expanded)
    per_category = max(1, batch // len(names))
    batch = per_category * len(names)  # equal shares: 3 categories make a batch of 4 into 3
    n_batches = min(e.scores.shape[0] for e in expanded.values()) // per_category
    # Bastion's batch path: per-slot acceptance calibration + allocate_batch_budget (Bastion.select
    # does the same on a DraftTree; here the trees are the recorded prefixes).
    calibrator = AcceptCalibrator(batch)
    ours_tokens = ours_seconds = 0.0
    equal_tokens = torch.zeros(n_max, dtype=torch.float64)
    equal_seconds = torch.zeros(n_max, dtype=torch.float64)
    for i in range(n_batches):
        rows = slice(i * per_category, (i + 1) * per_category)
        scores = torch.cat([expanded[c].scores[rows] for c in names])
        accepted = torch.cat([expanded[c].accepted[rows] for c in names])
        avail = torch.cat([expanded[c].avail[rows] for c in names])
        contexts = torch.cat([expanded[c].context_lens[rows] for c in names])
        table = latency.batch_latency_table(contexts, batch * n_max)
        counts = allocate_batch_budget(scores, table, calibrator.scale).long()
        got = accepted.gather(1, counts[:, None] - 1)[:, 0]
        calibrator.observe(surrogate_prefix(scores).gather(1, counts[:, None] - 1)[:, 0], got)
        ours_tokens += float((1 + got).sum())
        ours_seconds += float(table[int(counts.sum()) - 1])
        for n in range(1, n_max + 1):
            cut = torch.clamp(avail, max=n)
            equal_tokens[n - 1] += float((1 + accepted.gather(1, cut[:, None] - 1)).sum())
            equal_seconds[n - 1] += float(table[int(cut.sum()) - 1])
    equal = equal_tokens / equal_seconds
    best = int(torch.argmax(equal))
    return {
        "batch": batch,
        "batches": n_batches,
        "categories": names,
        "bastion_batch_tokens_per_s": ours_tokens / ours_seconds,
        "best_equal_budget": {"n": best + 1, "tokens_per_s": float(equal[best])},
        "equal_budgets_tokens_per_s": {str(n): float(equal[n - 1]) for n in (2, 4, 8, 16, 32, 64, 128, 256) if n <= n_max},
    }


def replay(rounds: list[RecordedRound], latency: LatencyModel, n_max: int = 64, fixed_ns=(4, 8, 16, 32, 64), batch: int = 4) -> dict:
    """Replay ``rounds`` (grouped by category) through Fixed(N), GreedyStop and Bastion.

    Returns a JSON-able dict: per category, per policy the mean accepted length, mean tree
    size and modelled tokens/s, and the oracle best fixed budget; plus the batch experiment
    when there are two or more categories.
    """
    by_category: dict[str, list[RecordedRound]] = {}
    for rnd in rounds:
        by_category.setdefault(rnd.category, []).append(rnd)
    expanded = {name: expand_rounds(group, n_max) for name, group in by_category.items()}
    result = {}
    for name, exp in expanded.items():
        policies = {f"fixed-{n}": Fixed(n, n_max) for n in fixed_ns if n <= n_max}
        # Without the speedup floor: a recording holds tree rounds only, and the replay scores
        # how each policy sizes its trees on them.
        policies["greedy_stop"] = GreedyStop(latency, n_max, floor=False)
        policies["bastion"] = Bastion(latency, n_max, floor=False)
        rows = {label: replay_policy(policy, exp, latency) for label, policy in policies.items()}
        sweep = fixed_sweep(exp, latency, n_max)
        oracle = max(sweep, key=lambda row: row["tokens_per_s"])
        result[name] = {
            "rounds": exp.scores.shape[0],
            "policies": rows,
            "oracle_fixed": oracle,
            "bastion_vs_oracle_fixed": rows["bastion"]["tokens_per_s"] / oracle["tokens_per_s"] - 1.0,
        }
    out = {"categories": result}
    if len(expanded) >= 2:
        out["batch"] = replay_batches(expanded, latency, n_max, batch)
    return out


def print_report(title: str, report: dict) -> None:
    print(f"\n== {title}")
    for name, cat in report["categories"].items():
        print(f"-- category {name} ({cat['rounds']} rounds)")
        print(f"{'policy':>14} {'accept len':>10} {'tree size':>9} {'tokens/s':>9}")
        for label, row in cat["policies"].items():
            print(f"{label:>14} {row['mean_accept_len']:>10.3f} {row['mean_nodes']:>9.1f} {row['tokens_per_s']:>9.2f}")
        o = cat["oracle_fixed"]
        print(f"{'oracle fixed':>14} {o['mean_accept_len']:>10.3f} {o['n']:>9d} {o['tokens_per_s']:>9.2f}   (N={o['n']}, hindsight)")
        print(f"   bastion vs oracle fixed: {100 * cat['bastion_vs_oracle_fixed']:+.1f}%")
    if "batch" in report:
        b = report["batch"]
        print(
            f"-- mixed batches of {b['batch']} ({b['batches']} batches, {'+'.join(b['categories'])}): "
            f"bastion allocation {b['bastion_batch_tokens_per_s']:.2f} tokens/s vs best equal budget "
            f"N={b['best_equal_budget']['n']} {b['best_equal_budget']['tokens_per_s']:.2f} tokens/s"
        )


def scenarios(calibration_path: Path, draft_ms: float) -> dict[str, tuple[LatencyModel, int]]:
    """The latency models replayed, each with its cap on the tree size: the embedded target on
    this CPU as calibrated by bench/calibrate_cpu.py (when its JSON exists; verify cost climbs
    fast, so a cap of 64), and a Qwen3-8B-sized target on an H100 by the uncalibrated datasheet
    roofline (nearly flat in n for hundreds of tokens, so a cap of 256). T_draft = ``draft_ms``
    in both (not measured here)."""
    out = {}
    if calibration_path.is_file():
        cal = json.loads(calibration_path.read_text())
        m = cal["model"]
        spec = ModelSpec(m["n_layers"], m["hidden_size"], m["n_heads"], m["n_kv_heads"], m["head_dim"], m["intermediate_size"], m["vocab_size"], m["element_bytes"])
        roofline = RooflineModel(spec, **cal["calibrated"])
        out["smollm2-135m fp32, this CPU (calibrated roofline)"] = (LatencyModel(roofline, draft_seconds=draft_ms / 1e3), 64)
    qwen3_8b = ModelSpec(36, 4096, 32, 8, 128, 12288, 151936, element_bytes=2)
    out["qwen3-8b bf16, H100 (datasheet roofline)"] = (LatencyModel(RooflineModel.from_device(qwen3_8b, DEVICES["H100"]), draft_seconds=draft_ms / 1e3), 256)
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=400, help="synthetic rounds per category")
    parser.add_argument("--rounds-file", type=Path, help="replay recorded rounds (.jsonl / .pt) instead")
    parser.add_argument("--draft-ms", type=float, default=0.0)
    parser.add_argument("--calibration", type=Path, default=ROOT / "bench" / "results" / "calibration_cpu_smollm2.json")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "policy_replay_synthetic.json")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.rounds_file is not None:
        rounds = load_rounds(args.rounds_file)
    else:
        rounds = [r for i, name in enumerate(CATEGORIES) for r in synthetic_rounds(name, args.rounds, seed=i)]
    results = {}
    for title, (latency, n_max) in scenarios(args.calibration, args.draft_ms).items():
        results[title] = {"n_max": n_max, **replay(rounds, latency, n_max, fixed_ns=tuple(n for n in (4, 8, 16, 32, 64, 128, 256) if n <= n_max))}
        print_report(title, results[title])
    out = {
        "command": "python bench/replay_policies.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "rounds": args.rounds_file.name if args.rounds_file else {"synthetic": {n: c.__dict__ for n, c in CATEGORIES.items()}, "per_category": args.rounds},
        "draft_ms": args.draft_ms,
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "scenarios": results,
        "runtime_s": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.out} ({out['runtime_s']:.0f} s)")
    return out


if __name__ == "__main__":
    main()
