"""``python -m emotivetalk_core.eval``: the Frechet distance, SyncNet's offset search and MFCC, the
standard network layouts, weight-file checks, and the command end to end on tiny random networks
and tiny lossless videos (nothing is downloaded)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from emotivetalk_core.eval import cli, expression, i3d, inception, syncnet, weights
from emotivetalk_core.eval.frechet import RunningGaussian, frechet_distance, frechet_distance_of
from emotivetalk_core.eval.videos import pair_videos
from emotivetalk_core.media.video_writer import VideoWriter

REPOSITORY = Path(__file__).resolve().parents[1]
TINY = 1 / 16  # width of the test networks: every channel count / 16
NETWORKS = (inception, i3d, syncnet, expression)
FRAMES, SIZE = 16, 64  # one FVD clip per video


@pytest.fixture(autouse=True)
def single_threaded():
    """One torch and one BLAS thread: on a shared 2-core machine two threads spin against other work
    (scipy's sqrtm measured 5.7 s with two, 0.2 s with one)."""
    from threadpoolctl import threadpool_limits  # with scikit-learn, a librosa dependency

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- Frechet distance


def _gaussian(features: np.ndarray) -> RunningGaussian:
    stats = RunningGaussian("test")
    for batch in np.array_split(features, 3):
        stats.add(batch)
    return stats


def test_running_gaussian_matches_numpy_mean_and_unbiased_covariance():
    # A large common offset: summing raw outer products would lose the covariance's digits
    # (1e12-sized sums in float64 are off by ~1e-4 of the variance 9).
    features = np.random.default_rng(0).normal(1e6, 3.0, (200, 5))
    mu, sigma = _gaussian(features).statistics()
    np.testing.assert_allclose(mu, features.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(features, rowvar=False), rtol=1e-8)


def test_frechet_distance_of_a_set_with_itself_is_zero():
    features = np.random.default_rng(1).normal(0.0, 2.0, (500, 8)) @ np.random.default_rng(2).normal(size=(8, 8))
    stats = _gaussian(features)
    trace = np.trace(stats.statistics()[1])
    assert abs(frechet_distance_of(stats, stats)) < 1e-9 * trace


def test_frechet_distance_equals_the_closed_form_for_diagonal_covariances():
    mu1, mu2 = np.array([0.0, 1.0, -2.0, 0.5]), np.array([1.0, 1.0, 0.0, -0.5])
    a, b = np.array([1.0, 4.0, 0.25, 2.0]), np.array([9.0, 1.0, 0.25, 0.5])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)  # 6 + 4 + 1 + 0 + 0.5
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_matches_the_symmetric_square_root_route_for_full_covariances():
    rng = np.random.default_rng(3)
    factors = rng.normal(size=(2, 6, 6))
    sigma1, sigma2 = (f @ f.T + 0.1 * np.eye(6) for f in factors)
    mu1, mu2 = rng.normal(size=(2, 6))
    # Tr sqrt(S1 S2) = Tr sqrt(R S2 R) with R = S1^(1/2): a symmetric matrix, so eigh alone does it.
    values, vectors = np.linalg.eigh(sigma1)
    root = vectors @ np.diag(np.sqrt(values)) @ vectors.T
    trace_root = np.sqrt(np.linalg.eigvalsh(root @ sigma2 @ root)).sum()
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_root
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_of_samples_approaches_the_closed_form():
    rng = np.random.default_rng(4)
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 0.25]), np.array([4.0, 1.0, 0.25])
    expected = 5.0 + 1.0 + 1.0 + 0.0
    n = 50_000
    first = _gaussian(mu1 + rng.normal(size=(n, 3)) * np.sqrt(a))
    second = _gaussian(mu2 + rng.normal(size=(n, 3)) * np.sqrt(b))
    # Sampling error: each mean coordinate is off by ~sqrt(var / n) <= 0.009, which moves the mean
    # term (|dmu|^2 = 5) by ~2 * |dmu| * 0.009 * sqrt(2) ~ 0.06 at one standard deviation; each
    # sqrt(variance) is off by ~sqrt(var / 2n) <= 0.006, moving the trace term by ~0.03. So 0.2 is
    # about three standard deviations; a wrong formula is off by 1 or more (e.g. dropping the
    # cross term gives 12.25 instead of 7).
    assert frechet_distance_of(first, second) == pytest.approx(expected, abs=0.2)


def test_singular_covariances_take_the_eps_offset_and_invalid_ones_are_refused():
    features = np.random.default_rng(5).normal(size=(5, 40))  # 5 samples in 40-d: rank 4
    stats = _gaussian(features)
    assert abs(frechet_distance_of(stats, stats)) < 1e-3
    # A covariance with a negative eigenvalue has no real square root: an error, not a number.
    with pytest.raises(ValueError, match="imaginary component"):
        frechet_distance(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), np.eye(2))


def test_a_covariance_needs_two_samples():
    stats = RunningGaussian("FID (generated)")
    stats.add(np.ones((1, 3)))
    with pytest.raises(ValueError, match=r"FID \(generated\): 1 sample"):
        stats.statistics()


# ---------------------------------------------------------------- SyncNet


@pytest.mark.parametrize("shift", [3, 0, -4])
def test_offset_search_finds_a_known_shift(shift):
    """Video embedding i = audio embedding i - shift (zero where that frame does not exist, as the
    zero padding of calc_pdist sees it): the best offset is ``shift`` and Sync-D there is ~0."""
    audio = torch.from_numpy(np.random.default_rng(6).normal(size=(40, 8)).astype(np.float32))
    video = torch.zeros_like(audio)
    for i in range(len(audio)):
        if 0 <= i - shift < len(audio):
            video[i] = audio[i - shift]
    scores = syncnet.sync_scores(video, audio)
    assert scores["offset"] == shift
    assert scores["sync_d"] < 1e-4
    assert scores["sync_c"] > 1.0  # every other offset pairs unrelated vectors, ~4 apart here


def test_mfcc_matches_python_speech_features():
    """Rows 0, 7 and 23 of python_speech_features 0.6's ``mfcc(int16 samples, 16000)`` for this
    signal, computed once with that package (syncnet_python's MFCC)."""
    n = np.arange(4000)
    speech = (0.3 * np.sin(2 * np.pi * 220 * n / 16000)
              + 0.2 * np.sin(2 * np.pi * 1250 * n / 16000) * np.sin(2 * np.pi * 3 * n / 16000)).astype(np.float32)
    reference = {
        0: [18.80034316, 29.2622224, -7.063873136, -12.87076772, 12.96318589, 22.90790968, -5.758283731,
            -40.04803626, -38.82955549, -13.3112, -2.422764103, -17.77041176, -30.76798823],
        7: [20.77297652, 15.89971722, -16.09546661, -10.55270679, 23.9297864, 37.13877438, 6.889427299,
            -32.31359632, -35.87644548, -12.34231927, -1.579780401, -17.9239448, -32.6175402],
        23: [20.51172276, 15.03168631, -15.41655073, -12.12823814, 18.31553936, 28.86305556, -0.8443771751,
             -36.94339296, -36.72302625, -10.34245649, 2.337735079, -12.85258109, -27.78948165],
    }
    coefficients = syncnet.mfcc(speech)
    assert coefficients.shape == (24, 13)  # 1 + ceil((4000 - 400) / 160) frames
    for row, values in reference.items():
        np.testing.assert_allclose(coefficients[row], values, rtol=1e-7, atol=1e-7)


def test_sync_windows_follow_syncnet_python():
    # min(frames, floor(samples / 640)) - 5: the video or the audio, whichever is shorter, decides.
    assert syncnet.windows(30, 30 * 640) == 25
    assert syncnet.windows(30, 20 * 640 + 639) == 15
    assert syncnet.windows(5, 30 * 640) == 0


# ---------------------------------------------------------------- the standard layouts


@pytest.mark.parametrize("module, count, shapes", [
    # Parameters and tensors of the published checkpoints' architectures (torchvision's Inception3
    # with 1008 classes and no aux head; ResNet-50 without its fc, 23,508,032 parameters + the heads).
    (inception, 23_850_960, {"Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3), "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
                             "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1), "fc.weight": (1008, 2048)}),
    (i3d, None, {"Conv3d_1a_7x7.conv3d.weight": (64, 3, 7, 7, 7), "Mixed_4f.b1b.conv3d.weight": (320, 160, 3, 3, 3),
                 "Mixed_5c.b3b.bn.running_var": (128,), "logits.conv3d.weight": (400, 1024, 1, 1, 1), "logits.conv3d.bias": (400,)}),
    (syncnet, None, {"netcnnaud.18.weight": (512, 256, 5, 4), "netfcaud.3.weight": (1024, 512), "netfclip.1.running_mean": (512,),
                     "netcnnlip.0.weight": (96, 3, 5, 7, 7), "netcnnlip.18.weight": (512, 256, 1, 6, 6)}),
    (expression, 23_508_032 + 2048 * 257 + 257, {"backbone.conv1.weight": (64, 3, 7, 7), "backbone.layer3.5.conv2.weight": (256, 256, 3, 3),
                                                 "backbone.layer4.0.downsample.0.weight": (2048, 1024, 1, 1),
                                                 "final_layers.1.weight": (64, 2048, 1, 1), "final_layers.6.bias": (1,)}),
])
def test_full_size_networks_have_the_published_layouts(module, count, shapes):
    with torch.device("meta"):  # no memory, no initialisation: only the layout is looked at
        network = module.build()
    state = network.state_dict()
    for key, shape in shapes.items():
        assert tuple(state[key].shape) == shape, key
    if count is not None:
        assert sum(parameter.numel() for parameter in network.parameters()) == count


def test_importing_the_package_and_its_command_line_imports_no_torch():
    code = "import sys, emotivetalk_core.eval, emotivetalk_core.eval.cli; print('torch' in sys.modules, 'scipy' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPOSITORY, capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


# ---------------------------------------------------------------- tiny networks and videos


def _calibrated(network: nn.Module, *calls) -> nn.Module:
    """BatchNorm statistics measured on random input (a random network's defaults, mean 0 and
    variance 1, shrink the activations layer after layer until every video looks the same)."""
    for module in network.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average: the statistics of these batches exactly
    network.train()
    with torch.no_grad():
        for call in calls:
            call(network)
    return network.eval()


def _video(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 1, (SIZE, SIZE, 3))
    t = np.arange(FRAMES)[:, None, None, None]
    frames = np.clip(0.7 * base + 0.3 * np.sin(t / 3 + 6 * base), 0, 1).astype(np.float32)
    samples = np.arange(FRAMES * 640)
    speech = (0.3 * rng.uniform(0.2, 1) * np.sin(2 * np.pi * 200 * samples / 16000)).astype(np.float32)
    # Lossless, so every run decodes the same frames.
    with VideoWriter(path, fps=25, width=SIZE, height=SIZE, audio=speech, sample_rate=16000, crf=0) as writer:
        writer.write(frames)
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Tiny random networks as safetensors and two folders of two 16-frame videos with audio."""
    root = tmp_path_factory.mktemp("eval")
    torch.manual_seed(0)
    networks = {
        inception: _calibrated(inception.build(TINY), lambda n: n(torch.rand(4, 3, 64, 64))),
        i3d: _calibrated(i3d.build(TINY), lambda n: n(torch.rand(2, 3, 16, 64, 64))),
        syncnet: _calibrated(syncnet.build(TINY), lambda n: n.forward_lip(torch.rand(4, 3, 5, 224, 224) * 255),
                             lambda n: n.forward_aud(torch.randn(4, 1, 13, 20) * 10)),
        expression: _calibrated(expression.build(TINY), lambda n: n(torch.rand(4, 3, 224, 224))),
    }
    files = {module: weights.save_network(network, module.KIND, TINY, root / f"{module.KIND}.safetensors")
             for module, network in networks.items()}
    for side, seed in (("generated", 0), ("truth", 100)):
        (root / side).mkdir()
        for index, name in enumerate(("a", "b")):
            _video(root / side / f"{name}.mp4", seed + index)
    return {"root": root, "files": files}


def _network_arguments(files: dict, modules=NETWORKS) -> list[str]:
    return [argument for module in modules for argument in (f"--{module.KIND}", str(files[module]))]


def _run_json(capsys, arguments: list[str]) -> dict:
    assert cli.main(arguments + ["--json", "--quiet"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_end_to_end_every_metric_on_tiny_networks(workspace, capsys):
    root, files = workspace["root"], workspace["files"]
    common = ["--generated", str(root / "generated")] + _network_arguments(files)
    same = _run_json(capsys, common + ["--truth", str(root / "generated")])
    different = _run_json(capsys, common + ["--truth", str(root / "truth")])
    for results in (same, different):
        for key in ("fid", "fvd", "e_fid", "sync_c", "sync_d"):
            assert np.isfinite(results[key]), key
        assert results["videos"] == 2
        assert results["samples"] == {"fid": [32, 32], "fvd": [2, 2], "e_fid": [32, 32]}
        assert set(results["sync"]) == {"a", "b"}
    for key in ("fid", "fvd", "e_fid"):
        assert abs(same[key]) < 1e-3, key  # the same frames: only the eps offset of a singular covariance
        assert different[key] > 0.05 and different[key] > 1000 * abs(same[key]), key
    # Sync reads only the generated videos: the ground truth changes nothing.
    assert same["sync"] == different["sync"]
    assert same["sync_d"] > 0 and same["sync_c"] >= 0


def test_frame_step_and_table_output(workspace, capsys):
    root, files = workspace["root"], workspace["files"]
    arguments = ["--generated", str(root / "generated"), "--truth", str(root / "truth"), "--frame-step", "4",
                 "--quiet"] + _network_arguments(files, (inception,))
    assert cli.main(arguments) == 0
    table = capsys.readouterr().out
    assert "FID" in table and "8 / 8 frames" in table  # 16 frames, every 4th, 2 videos
    assert "FVD" not in table and "Sync-C" not in table


def test_sync_needs_no_ground_truth(workspace, capsys):
    root, files = workspace["root"], workspace["files"]
    results = _run_json(capsys, ["--generated", str(root / "generated" / "a.mp4")] + _network_arguments(files, (syncnet,)))
    assert set(results["sync"]) == {"a"} and np.isfinite(results["sync_c"])
    assert "fid" not in results


# ---------------------------------------------------------------- refusals


def _forbid_loading(monkeypatch):
    def load_network(*args, **kwargs):
        raise AssertionError("a network was loaded before the arguments were checked")

    monkeypatch.setattr(weights, "load_network", load_network)


def test_a_weight_file_with_missing_keys_is_refused_naming_the_file(workspace, tmp_path, capsys):
    root = workspace["root"]
    network = inception.build(TINY)
    tensors = {key: value for key, value in network.state_dict().items() if not key.startswith("Mixed_7c.")}
    broken = tmp_path / "pt_inception_converted.safetensors"
    save_file(tensors, str(broken), metadata={weights.WIDTH_KEY: repr(TINY)})
    with pytest.raises(ValueError, match=r"pt_inception_converted\.safetensors.*missing key\(s\), e\.g\. Mixed_7c\.") as error:
        weights.load_network(inception.build(TINY), broken, "--inception")
    assert "docs/EVALUATION.md" in str(error.value)
    arguments = ["--generated", str(root / "generated"), "--truth", str(root / "truth"), "--inception", str(broken)]
    assert cli.main(arguments + ["--quiet"]) == 2
    assert str(broken) in capsys.readouterr().err


def test_a_missing_truth_is_refused_before_any_network_loads(workspace, monkeypatch, capsys):
    root, files = workspace["root"], workspace["files"]
    _forbid_loading(monkeypatch)
    arguments = ["--generated", str(root / "generated")] + _network_arguments(files, (inception, syncnet))
    assert cli.main(arguments) == 2
    assert "--truth is required with --inception" in capsys.readouterr().err
    assert cli.main(arguments + ["--truth", str(root / "no-such-folder")]) == 2
    assert f"--truth: no such file or folder: {root / 'no-such-folder'}" in capsys.readouterr().err


@pytest.mark.parametrize("change, message", [
    ({}, "give at least one network file"),
    ({"--fps": "0"}, "--fps must be a positive number"),
    ({"--frame-step": "0"}, "--frame-step must be at least 1"),
    ({"--syncnet": "inception"}, "holds the inception network, not the syncnet one"),
    ({"--i3d": "missing.safetensors"}, "--i3d: weight file not found"),
])
def test_bad_arguments_are_refused_before_any_network_loads(workspace, monkeypatch, capsys, change, message):
    root, files = workspace["root"], workspace["files"]
    _forbid_loading(monkeypatch)
    arguments = ["--generated", str(root / "generated"), "--truth", str(root / "truth")]
    for flag, value in change.items():
        if value == "inception":
            value = str(files[inception])
        arguments += [flag, value]
    if "--fps" in change or "--frame-step" in change:
        arguments += _network_arguments(files, (inception,))
    assert cli.main(arguments) == 2
    assert message in capsys.readouterr().err


def test_videos_without_a_partner_are_named(workspace, tmp_path):
    root = workspace["root"]
    generated, truth = tmp_path / "generated", tmp_path / "truth"
    generated.mkdir(), truth.mkdir()
    for folder, names in ((generated, ("a", "b")), (truth, ("a", "c"))):
        for name in names:
            (folder / f"{name}.mp4").write_bytes((root / "generated" / "a.mp4").read_bytes())
    with pytest.raises(ValueError, match=r"without ground truth in .*: b\.mp4; 1 ground-truth video\(s\) without a generated one .*: c\.mp4"):
        pair_videos(generated, truth)
    assert [pair.name for pair in pair_videos(generated, generated)] == ["a", "b"]
