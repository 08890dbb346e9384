"""A first-run quick calibration is pooled with the next runs' measurements before it is
kept, so one disturbed run does not decide every later run's budgets."""

import json

import pytest

import bastion.calibrate as cal


@pytest.fixture
def fake_measure(monkeypatch):
    """calibrate() stand-in: records what it pooled with; latency_from() passes the dict."""
    seen = []

    def calibrate(model, drafter=None, previous=None):
        seen.append(None if previous is None else previous["runs"])
        return {"runs": 1 if previous is None else previous["runs"] + 1, "grid": {}, "roofline": {}}

    monkeypatch.setattr(cal, "calibrate", calibrate)
    monkeypatch.setattr(cal, "latency_from", lambda calibration, model: calibration)
    return seen


def test_quick_calibration_is_refined_then_kept(fake_measure, tmp_path):
    path = tmp_path / "lat.json"
    results = [cal.load_or_calibrate(None, None, path, log=lambda m: None) for _ in range(cal.QUICK_RUNS + 2)]
    assert fake_measure == [None] + list(range(1, cal.QUICK_RUNS))  # measured QUICK_RUNS times, then kept
    assert [r["runs"] for r in results] == list(range(1, cal.QUICK_RUNS + 1)) + [cal.QUICK_RUNS] * 2
    assert json.loads(path.read_text())["runs"] == cal.QUICK_RUNS


def test_a_deliberate_calibration_is_never_remeasured(fake_measure, tmp_path):
    path = tmp_path / "lat.json"
    path.write_text(json.dumps({"grid": {}, "roofline": {}}))  # what `bastion calibrate` saves
    assert cal.load_or_calibrate(None, None, path, log=lambda m: None) == {"grid": {}, "roofline": {}}
    assert fake_measure == []


def test_unreadable_calibration_is_named(fake_measure, tmp_path):
    path = tmp_path / "lat.json"
    path.write_text("[1, 2")
    with pytest.raises(ValueError, match="unreadable"):
        cal.load_or_calibrate(None, None, path, log=lambda m: None)


def test_an_unwritable_cache_is_a_warning(fake_measure, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    logs = []
    result = cal.load_or_calibrate(None, None, blocker / "lat.json", log=logs.append)
    assert result["runs"] == 1 and fake_measure == [None]  # this run still uses its measurement
    assert logs[-1].startswith(f"warning: cannot save the latency calibration to {blocker / 'lat.json'}")


def test_save_replaces_the_file_whole(monkeypatch, tmp_path):
    """An interrupted save leaves the old calibration (never a cut one) and no stray files."""
    path = tmp_path / "lat.json"
    cal.save({"runs": 1}, path)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("os.replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cal.save({"runs": 2, "grid": list(range(1000))}, path)
    assert json.loads(path.read_text()) == {"runs": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["lat.json"]
