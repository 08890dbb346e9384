"""Latency calibration of a target on this device: time verify forwards over a grid of (tree
tokens, context length), fit the roofline (``bastion_ext.latency``), time the drafter, and
save / load the result as the ``LatencyModel`` that ``caddtree`` and ``bastion`` plan with."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from bastion_ext import ops
from bastion_ext.latency import (LatencyModel, ModelSpec, RooflineModel, fit_roofline,
                                 measure_device, measure_verify_grid)
from bastion_ext.latency.calibration import VerifyGrid
from bastion_ext.timing import time_us

from .cache import cache_dir
from .engine.target import TargetCache
from .outputs import AtomicLines

QUICK_NS = (2, 4, 8, 16, 32, 64)  # a verify is the root + >= 1 node: never 1 token
QUICK_CS = (64, 512)
QUICK_RUNS = 3  # runs whose quick measurements are pooled before the calibration is kept


def default_path(model) -> Path:
    """Where a calibration of ``model`` on its device is kept between runs."""
    name = Path(str(getattr(model.config, "_name_or_path", "") or model.config.model_type)).name
    return cache_dir("latency") / f"{name}-{model.config.num_hidden_layers}L-{model.device.type}-{model.dtype}.json".replace("torch.", "")


def _verify_forward_fn(model, n_max: int):
    """forward_fn(n, c) for ``measure_verify_grid``: one verify forward of the root and a tree
    of n - 1 nodes (random draft) over a cache of c (random) tokens, through the engine's
    verify path; the cache is rewound after it. One prefilled cache per c is kept: the grid's
    sweeps revisit every c, and a prefill inside a timed call would be counted as verify time."""
    caches: dict[int, TargetCache] = {}
    trees = {}
    vocab = model.config.vocab_size
    device = model.device
    draft = torch.randn((1, ops.MAX_POSITIONS, 64), generator=torch.Generator().manual_seed(0)).to(device)

    def forward(n: int, c: int) -> None:
        if c not in caches:
            caches[c] = TargetCache(model, batch=1, capacity=c + n_max + 1)
            if c:
                caches[c].prefill([torch.randint(vocab, (c,)).tolist()])
        if n > 1 and (n, c) not in trees:  # built outside the timed calls' steady state: the first sweep warms up
            trees[n, c] = ops.build_tree(draft, 8, n - 1, context_lens=torch.tensor([c], device=device))
        target = caches[c]
        root = torch.zeros((1,), dtype=torch.long, device=device)
        if n == 1:  # no tree: a plain step
            target.step(root)
        else:
            target.verify(trees[n, c], root, n - 1)
        target.rewind(c)

    return forward


def draft_seconds(drafter, model, context: int = 64, repeats: int = 3) -> float:
    """Median seconds of one drafter forward after a ``context``-token extend: host wall time
    with the device's work finished (the engine calls the drafter eagerly, launches included)."""
    state = drafter.new_state(1)
    features = torch.randn((1, context, drafter.feature_size), device=model.device, dtype=model.dtype)
    drafter.extend(state, features, torch.arange(context, device=model.device)[None])
    root = torch.zeros((1,), dtype=torch.long, device=model.device)
    where = torch.tensor([context], device=model.device)

    def draft_and_wait() -> None:
        drafter.draft(state, root, where)
        if model.device.type == "cuda":
            torch.cuda.synchronize()

    return time_us(draft_and_wait, "cpu", repeats, warmup=1)["median_us"] / 1e6


def calibrate(model, drafter=None, ns=QUICK_NS, cs=QUICK_CS, repeats: int = 3, previous: dict | None = None) -> dict:
    """Measure and fit. Returns a JSON-ready dict: the grid, the fitted roofline (and its
    RMSE before / after the fit), the drafter's seconds and the device.

    The fit uses each point's fastest repeat: load from other processes only ever adds time.
    ``previous``: an earlier calibration of the same grid (what this function returned): its
    sweeps are kept beside the new ones and ``runs`` counts the measurements pooled, so that
    one disturbed run cannot decide the fit.
    """
    spec = ModelSpec.from_hf_config(model.config, element_bytes=model.dtype.itemsize)
    sync = torch.cuda.synchronize if model.device.type == "cuda" else None
    grid = measure_verify_grid(_verify_forward_fn(model, max(ns)), ns, cs, repeats=repeats, synchronize=sync)
    draft = draft_seconds(drafter, model) if drafter is not None else 0.0
    runs = 1
    if previous is not None:
        old = previous["grid"]
        if old["ns"] != grid.ns.tolist() or old["cs"] != grid.cs.tolist():
            raise ValueError(f"cannot pool a calibration of grid ns={old['ns']} cs={old['cs']} with ns={grid.ns.tolist()} cs={grid.cs.tolist()}")
        samples = torch.cat([torch.tensor(old["samples_s"], dtype=torch.float64), grid.samples])
        grid = VerifyGrid(grid.ns, grid.cs, samples)
        draft = min(draft, previous.get("draft_seconds", draft)) if drafter is not None else 0.0
        runs = int(previous.get("runs", 1)) + 1
    start = RooflineModel.from_device(spec, measure_device(model.device, model.dtype))
    try:
        fit = fit_roofline(spec, *grid.points("min"), start=start)
    except ValueError as err:
        raise ValueError(f"the latency sweep could not be fitted ({err}); the machine may be too busy: "
                         "rerun `bastion calibrate` with more --repeats (or under `chrt -f 1`)") from err
    return {
        "device": torch.cuda.get_device_name() if model.device.type == "cuda" else f"cpu x{torch.get_num_threads()} threads",
        "model": spec.__dict__,
        "grid": grid.to_dict(),
        "roofline": fit.to_dict(),
        "draft_seconds": draft,
        "runs": runs,
    }


def latency_from(calibration: dict, model) -> LatencyModel:
    """The ``LatencyModel`` of a calibration dict: what ``calibrate`` saves, or the
    ``"calibrated"`` roofline of bench/calibrate_cpu.py's file (no drafter time there)."""
    spec = ModelSpec.from_hf_config(model.config, element_bytes=model.dtype.itemsize)
    fitted = calibration["roofline"] if "roofline" in calibration else calibration["calibrated"]
    # Every fitted field the saved roofline has (the RMSEs beside them are not fields).
    names = {f.name for f in dataclasses.fields(RooflineModel)} - {"model"}
    roofline = RooflineModel(spec, **{k: v for k, v in fitted.items() if k in names})
    return LatencyModel(roofline, draft_seconds=calibration.get("draft_seconds", 0.0))


def save(calibration: dict, path: str | os.PathLike) -> Path:
    """Write ``calibration`` to ``path`` atomically: a file cut short by an interrupted save
    would make every later run fail to read it. OSError if the directory is not writable."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(calibration, indent=1)
    with AtomicLines(str(path), keep_partial=False) as f:
        f.write_line(text)
    return path


def load_or_calibrate(model, drafter=None, path: str | os.PathLike | None = None, log=print) -> LatencyModel:
    """The saved calibration at ``path`` (default: :func:`default_path`), else a quick one now.

    A quick calibration is not final after one run: the next ``QUICK_RUNS - 1`` runs each
    measure the grid again and pool their sweeps with it (the fit takes every point's fastest),
    so a first run on a busy machine does not decide every later run's budgets. A calibration
    from ``bastion calibrate`` (no ``runs`` count) is used as it is.
    """
    path = Path(path) if path is not None else default_path(model)
    previous = None
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
            if previous.get("runs", QUICK_RUNS) >= QUICK_RUNS:
                return latency_from(previous, model)
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"latency calibration {str(path)!r} is unreadable ({err}); rerun `bastion calibrate`") from err
        log(f"refining the quick latency calibration at {path} (run {previous.get('runs', 1) + 1} of {QUICK_RUNS})")
    else:
        log(f"no latency calibration at {path}: measuring a quick one, refined by the next {QUICK_RUNS - 1} runs "
            "(bastion calibrate saves a fuller one)")
    calibration = calibrate(model, drafter, previous=previous)
    try:
        save(calibration, path)
    except OSError as err:  # the measurement is still good for this run
        log(f"warning: cannot save the latency calibration to {path} ({err.strerror or err}); "
            "the next run will measure again")
    return latency_from(calibration, model)
