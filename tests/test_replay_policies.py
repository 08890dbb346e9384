"""bench/replay_policies.py: the offline evaluator agrees with itself and reads its own format."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from bastion_ext.latency import LatencyModel, ModelSpec, RooflineModel

_PATH = Path(__file__).resolve().parents[1] / "bench" / "replay_policies.py"
_SPEC = importlib.util.spec_from_file_location("replay_policies", _PATH)
replay_policies = importlib.util.module_from_spec(_SPEC)
sys.modules["replay_policies"] = replay_policies  # dataclasses look their module up there
_SPEC.loader.exec_module(replay_policies)

LATENCY = LatencyModel(RooflineModel(ModelSpec(30, 576, 9, 3, 64, 1536, 49152, 4), 90e9, 9e9, 0.03), draft_seconds=0.01)


@pytest.fixture(scope="module")
def rounds():
    return [r for i, name in enumerate(("easy", "hard")) for r in replay_policies.synthetic_rounds(name, 24, seed=i, positions=6, vocab=64, k=4)]


def test_rounds_round_trip_through_jsonl(rounds, tmp_path):
    path = tmp_path / "rounds.jsonl"
    replay_policies.save_rounds(rounds[:5], path)
    loaded = replay_policies.load_rounds(path)
    assert [r.category for r in loaded] == [r.category for r in rounds[:5]]
    for a, b in zip(loaded, rounds[:5]):
        assert torch.equal(a.topk_ids, b.topk_ids) and torch.equal(a.target_tokens, b.target_tokens)
        assert torch.allclose(a.topk_logprobs, b.topk_logprobs) and a.context_len == b.context_len
    with pytest.raises(ValueError, match="topk_ids"):
        replay_policies.RecordedRound.from_dict({"topk_ids": [1, 2], "topk_logprobs": [0.0, 0.0], "target_tokens": [1], "context_len": 0})


def test_replay_fixed_policies_agree_with_the_fixed_sweep(rounds):
    report = replay_policies.replay(rounds, LATENCY, n_max=16, fixed_ns=(4, 16), batch=4)
    for name in ("easy", "hard"):
        category = report["categories"][name]
        sweep = replay_policies.fixed_sweep(replay_policies.expand_rounds([r for r in rounds if r.category == name], 16), LATENCY, 16)
        for n in (4, 16):
            row = category["policies"][f"fixed-{n}"]
            assert row["tokens_per_s"] == pytest.approx(sweep[n - 1]["tokens_per_s"], rel=1e-9)
            assert row["mean_accept_len"] == pytest.approx(sweep[n - 1]["mean_accept_len"], rel=1e-9)
        assert category["oracle_fixed"]["tokens_per_s"] == max(row["tokens_per_s"] for row in sweep)
        for row in category["policies"].values():
            assert 0 <= row["mean_accept_len"] <= 6 and 1 <= row["mean_nodes"] <= 16
    assert report["batch"]["batches"] == 12
