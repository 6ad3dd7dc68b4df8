"""benchmarks/bench_quality_per_call.py: each config's goal beside its figures, and a run's file never written over."""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_quality_per_call.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_quality_per_call", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _line(config, passes, **changes):
    base = {"lip_sync": 0.85, "lip_sync_within_clip": 0.85, "emotion_accuracy": 0.875, "emotion_strength": 0.66,
            "identity_error": 0.05, "grain": 0.017}
    return {"config": config, "unet_passes_per_window": passes, **base, **changes}


def test_a_config_meets_the_goal_only_with_every_metric_within_0_02_at_a_quarter_of_the_passes():
    bench = _bench()
    reference = _line("euler:25", 100.0)
    # Lower identity error and grain are better; 0.015 worse is within, 0.03 worse is not.
    good = bench.verdict(_line("student", 6.0, lip_sync=0.835, identity_error=0.03, grain=0.01), reference)
    assert good["worse_than_reference"] == [] and good["goal_met"] is True and good["reference"] == "euler:25"
    worse = bench.verdict(_line("dpmpp_2m:6", 24.0, identity_error=0.10, emotion_strength=0.63), reference)
    assert worse["worse_than_reference"] == ["emotion_strength", "identity_error"] and worse["goal_met"] is False
    costly = bench.verdict(_line("euler:12", 48.0), reference)
    assert costly["worse_than_reference"] == [] and costly["goal_met"] is False  # same quality, half the passes
    assert "<= 25 UNet passes" in costly["goal"]


def test_an_existing_out_file_is_refused_before_any_model_loads(tmp_path, monkeypatch):
    bench = _bench()
    earlier = tmp_path / "teacher.jsonl"
    earlier.write_text("a run's lines\n")
    monkeypatch.setattr(sys, "argv", ["bench", "--configs", "euler:6", "--out", str(earlier)])
    with pytest.raises(SystemExit, match="exists: give a new file"):
        bench.main()
    assert earlier.read_text() == "a run's lines\n"
