"""``python -m emotivetalk_core synth ...``: portraits, the judge on an mp4, and the refusals of
train and evaluate (the runs themselves are measured by the default model's held-out test and by
CI's ``synth train --minutes 5``)."""

import json

import numpy as np
import pytest
from PIL import Image

from emotivetalk_core.cli import main
from emotivetalk_core.media.video_writer import VideoWriter
from emotivetalk_core.synth import training, world
from emotivetalk_core.synth.dataset import make_clip


def _fails_with(capsys, argv, *phrases):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for phrase in phrases:
        assert phrase in err, err


def test_portrait_renders_the_person_and_emotion_asked_for(tmp_path, capsys):
    from emotivetalk_core.synth.render import render

    out = tmp_path / "p.png"
    assert main(["synth", "portrait", "--seed", "5", "--emotion", "surprised", "--out", str(out)]) == 0
    who = world.identity(5)
    expected = render(who, world.still(who, world.Emotion("surprised")).params, world.SIZE).rgb[0]
    assert np.array_equal(np.asarray(Image.open(out)), expected)
    big = tmp_path / "big.png"
    assert main(["synth", "portrait", "--seed", "5", "--size", "256", "--out", str(big)]) == 0
    assert Image.open(big).size == (256, 256)
    assert "person 5" in capsys.readouterr().out


def test_portrait_never_writes_over_a_file_and_names_bad_arguments(tmp_path, capsys):
    mine = tmp_path / "mine.png"
    mine.write_bytes(b"my picture")
    _fails_with(capsys, ["synth", "portrait", "--seed", "1", "--out", str(mine)], "mine.png exists")
    assert mine.read_bytes() == b"my picture"
    _fails_with(capsys, ["synth", "portrait", "--seed", "1", "--emotion", "bored", "--out", str(tmp_path / "a.png")],
                "bored", "neutral, happy, sad, angry, surprised")
    _fails_with(capsys, ["synth", "portrait", "--seed", "1", "--size", "8", "--out", str(tmp_path / "b.png")], "--size")
    _fails_with(capsys, ["synth", "portrait", "--seed", "1", "--out", str(tmp_path / "c.jpg")], "PNG")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["mine.png"]


def test_judge_reads_an_mp4_and_prints_json(tmp_path, capsys):
    who = world.identity(2 * 777 + 1)
    clip = make_clip(who, world.Emotion("happy"), "hello my friend, how are you", seed=3)
    video = tmp_path / "happy.mp4"
    with VideoWriter(video, 25, world.SIZE, world.SIZE) as writer:
        writer.write(clip.frames.rgb)
    assert main(["synth", "judge", str(video), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["frames"] == clip.num_frames and report["emotion"] == "happy"
    judged = np.array(report["per_frame"]["mouth_open"])
    assert np.corrcoef(judged, clip.performance.params["mouth_open"])[0, 1] > 0.8
    _fails_with(capsys, ["synth", "judge", str(tmp_path / "none.mp4")], "none.mp4")


def test_train_refuses_a_used_folder_and_a_bad_budget_before_any_work(tmp_path, capsys):
    used = tmp_path / "run"
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    _fails_with(capsys, ["synth", "train", "--out", str(used), "--minutes", "5"], "not empty")
    assert [path.name for path in used.iterdir()] == ["notes.txt"]
    _fails_with(capsys, ["synth", "train", "--out", str(tmp_path / "new"), "--minutes", "0.5"], "--minutes")
    assert not (tmp_path / "new").exists()


def test_the_plan_scales_with_the_budget_and_ethd_gets_most_of_it():
    short, full = training.Plan.for_budget(5, seed=0), training.Plan.for_budget(90, seed=0)
    assert full.steps["ethd"] > 10 * short.steps["ethd"] and full.people > short.people
    planned = {phase: full.expected_seconds(phase) for phase in training.PHASES}
    assert sum(planned.values()) <= 90 * 60
    assert planned["ethd"] == max(planned.values())
    assert training.Plan.for_budget(90, seed=0) == full  # a function of its arguments alone


def test_evaluate_refuses_the_training_world_and_too_few_clips(capsys):
    from emotivetalk_core.bundles import DEFAULT_MODEL_PATH
    from emotivetalk_core.checkpoints import read_metadata

    trained_in = read_metadata(DEFAULT_MODEL_PATH)[1]["synthtalk"]["world_seed"]
    _fails_with(capsys, ["synth", "evaluate", "--seed", str(trained_in)], f"--seed {trained_in} is the world", "another seed")
    _fails_with(capsys, ["synth", "evaluate", "--seed", "12345", "--clips", "4"], "--clips must be at least 20")
