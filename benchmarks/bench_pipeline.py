"""Speed and memory figures of the generation pipeline, as ratios measured in one run.

    python benchmarks/bench_pipeline.py [--quick] [--json]

Figures (goals in brackets; BENCHMARKS.md records a run and the machine it came from):

- sampler_vs_diffusers: our denoising loop / diffusers' StableVideoDiffusionPipeline loop
  (output_type="latent"), same tiny base UNet, one window, reference-only guidance, same steps;
  median over alternating runs in one process [<= 1.0].
- per_frame_60s_vs_10s: wall time per output frame, 60 s of audio / 10 s (default model) [<= 1.10].
- host_mb_per_minute: peak RSS growth per minute of audio while streaming to an mp4 with
  512x512 latent shapes (a cheap stand-in denoiser and decoder with the real shapes), beside the
  latent state's own size per minute [within 2x of it].
- stage_share: share of wall time per stage on the default model.
- adapter_flops_overhead: FLOPs per frame of svd-xt + adapters / svd-xt at 512x512, counted with
  torch's FlopCounterMode under FakeTensorMode (no memory) [<= 1.15].
- adapter_walltime_overhead_svdxt: wall time of one ETHD call / its base UNet's, svd-xt with random
  weights, 4 frames of 16x16 latents, median of the ratios of alternating pairs of runs [<= 1.08];
  the same at the tiny config (reported).

``--quick`` shrinks the workloads (e.g. 12 s / 2 s instead of 60 s / 10 s) to stay under two
minutes; CI runs it so the script cannot rot.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emotivetalk_core.configs import get_config  # noqa: E402

RATE = 16000
# The goal of each figure (on its "ratio"); the others are reported for orientation.
GOALS = {"adapter_flops_overhead": "<= 1.15", "adapter_walltime_overhead_svdxt": "<= 1.08", "sampler_vs_diffusers": "<= 1.0",
         "per_frame_60s_vs_10s": "<= 1.10", "host_mb_per_minute": "<= 2 (x the latent state)"}


def _speech(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
    return (0.3 * envelope * np.sin(2 * np.pi * 180 * t)).astype(np.float32)


# --- sampler vs diffusers -------------------------------------------------------------------

def sampler_vs_diffusers(runs: int, steps: int) -> dict:
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, StableVideoDiffusionPipeline
    from transformers import CLIPImageProcessor

    from emotivetalk_core.networks.ethd import ETHD
    from emotivetalk_core.sampling import Conditioning, GuidedDenoiser, Guidance, initial_noise, karras_sigmas, sample_euler, start_latents
    from emotivetalk_core.svd.build import build_image_encoder
    from emotivetalk_core.svd.conditioning import added_time_ids, image_embeds, reference_latent

    torch.manual_seed(0)
    cfg = get_config("tiny")
    ethd = ETHD.from_config(cfg).eval()
    vae = AutoencoderKLTemporalDecoder(**cfg["vae"]).eval()
    encoder_cfg = dict(cfg["image_encoder"], image_size=224, patch_size=32)  # the pipeline always resizes to 224
    encoder = build_image_encoder(encoder_cfg).eval()
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", interpolation_type="linear",
                                       num_train_timesteps=1000, prediction_type="v_prediction", sigma_max=700.0, sigma_min=0.002,
                                       steps_offset=1, timestep_spacing="leading", timestep_type="continuous", use_karras_sigmas=True)
    pipe = StableVideoDiffusionPipeline(vae=vae, image_encoder=encoder, unet=ethd.unet, scheduler=scheduler,
                                        feature_extractor=CLIPImageProcessor())
    pipe.set_progress_bar_config(disable=True)
    frames, size, guidance = cfg["ethd"]["clip_frames"], 64, 2.5
    from PIL import Image

    pil = Image.fromarray(np.random.default_rng(1).integers(0, 256, size=(size, size, 3), dtype=np.uint8))
    image = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    noise = initial_noise(0, frames, (4, size // 8, size // 8))

    marks: dict[str, float] = {}
    original_scale = pipe.scheduler.scale_model_input

    def scale_and_mark(*args, **kwargs):
        marks.setdefault("start", time.perf_counter())
        return original_scale(*args, **kwargs)

    pipe.scheduler.scale_model_input = scale_and_mark

    def end_mark(pipeline, step, timestep, tensors):
        marks["end"] = time.perf_counter()
        return tensors

    def run_diffusers() -> float:
        marks.clear()
        with torch.no_grad():
            pipe(pil, height=size, width=size, num_frames=frames, num_inference_steps=steps, min_guidance_scale=guidance,
                 max_guidance_scale=guidance, fps=7, noise_aug_strength=0.02, decode_chunk_size=frames, output_type="latent",
                 latents=noise * 1.0, callback_on_step_end=end_mark)
        return marks["end"] - marks["start"]

    with torch.no_grad():
        conditioning = Conditioning(
            reference_latent=reference_latent(vae, image, 0.02, torch.Generator().manual_seed(0)),
            image_embeds=image_embeds(encoder, image), added_time_ids=added_time_ids(6, 127, 0.02),
            lip_windows=torch.zeros(1, frames, 5, cfg["adapter"]["lip_dim"]),
            driven_exp=torch.zeros(1, frames, cfg["adapter"]["exp_dim"]), reference_exp=torch.zeros(1, cfg["adapter"]["exp_dim"]))
    sigmas = karras_sigmas(steps)
    # The loop itself runs on the same base UNet as diffusers' (ETHD's signature, tokens ignored);
    # with ETHD's zero adapters as well, for the adapters' share (their FLOPs: adapter_flops).
    loops = {"base": GuidedDenoiser(_BaseUNet(ethd.unet), conditioning, Guidance(guidance, guidance, guidance)),
             "with_adapters": GuidedDenoiser(ethd, conditioning, Guidance(guidance, guidance, guidance))}

    def run_ours(name: str) -> float:
        start = time.perf_counter()
        sample_euler(loops[name], start_latents(noise, sigmas), sigmas)
        return time.perf_counter() - start

    run_ours("base"), run_ours("with_adapters"), run_diffusers()  # warm-up
    times: dict[str, list[float]] = {"base": [], "with_adapters": [], "diffusers": []}
    for _ in range(runs):  # alternating, so drifts of a shared machine hit all three alike
        times["base"].append(run_ours("base"))
        times["diffusers"].append(run_diffusers())
        times["with_adapters"].append(run_ours("with_adapters"))
    median = {name: statistics.median(values) for name, values in times.items()}
    return {"ratio": median["base"] / median["diffusers"], "ratio_with_adapters": median["with_adapters"] / median["diffusers"],
            "median_s": median, "runs": runs, "steps": steps, "frames": frames, "size": size}


class _BaseUNet(torch.nn.Module):
    """The base SVD UNet behind ETHD's call signature (the EmotiveTalk tokens are ignored)."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, image_embeds, added_time_ids, **_):
        return self.unet(sample, timestep, image_embeds, added_time_ids=added_time_ids, return_dict=False)[0]


# --- default-model runs: per-frame cost and stage shares ---------------------------------------

def _timed_generation(pipeline, portrait, seconds: float, settings, out: Path) -> dict:
    from emotivetalk_core.emotion import EmotionSource, single
    from emotivetalk_core.media.video_writer import VideoWriter
    from emotivetalk_core.pipeline import decode_frames, encode_reference, encode_speech, expand_expression, lip_stream, prepare_audio, sample_latents
    import soundfile

    wav = out.with_suffix(".wav")
    soundfile.write(wav, _speech(seconds), RATE)
    timeline = single(EmotionSource("label", "happy"))
    times: dict[str, float] = {}

    def timed(stage, fn, *args):
        start = time.perf_counter()
        result = fn(*args)
        times[stage] = times.get(stage, 0.0) + time.perf_counter() - start
        return result

    from emotivetalk_core.media.audio import load_audio

    waveform = timed("audio decode", load_audio, wav)
    audio = prepare_audio(waveform, RATE, settings.fps)
    speech = timed("speech encoder", encode_speech, pipeline.vaid, audio)
    lip = timed("V-AID", lip_stream, pipeline.vaid, speech)
    reference = encode_reference(pipeline.model, pipeline.vaid, portrait, settings.width, settings.height)
    driven = timed("Di-CTE", expand_expression, pipeline.vaid, speech, reference, timeline, settings.fps, 0, settings.dicte_steps)
    latents = timed("UNet", sample_latents, pipeline.model, reference, lip, driven, settings)
    with VideoWriter(out, settings.fps, settings.width, settings.height, audio=audio.waveform) as writer:
        blocks = decode_frames(pipeline.model, latents, settings.decode_chunk_for(pipeline.model))
        while True:
            block = timed("VAE decode", next, blocks, None)
            if block is None:
                break
            timed("video write", writer.write, block)
    total = sum(times.values())
    return {"frames": audio.num_frames, "seconds": total, "per_frame_s": total / audio.num_frames, "stages": times}


def default_model_figures(long_s: float, short_s: float) -> dict:
    from emotivetalk_core.media.image import load_image
    from emotivetalk_core.pipeline import EmotiveTalkPipeline
    from emotivetalk_core.settings import GenerationSettings
    from emotivetalk_core.cli import DEMO_PORTRAIT

    pipeline = EmotiveTalkPipeline.from_files("default")
    portrait = load_image(DEMO_PORTRAIT)
    settings = GenerationSettings(steps=2, dicte_steps=4).for_model(pipeline.model)  # the model's native size
    with tempfile.TemporaryDirectory() as folder:
        _timed_generation(pipeline, portrait, 1.0, settings, Path(folder) / "warm.mp4")
        short = _timed_generation(pipeline, portrait, short_s, settings, Path(folder) / "short.mp4")
        long = _timed_generation(pipeline, portrait, long_s, settings, Path(folder) / "long.mp4")
    share = {stage: t / long["seconds"] for stage, t in long["stages"].items()}
    return {
        "per_frame": {"ratio": long["per_frame_s"] / short["per_frame_s"], "long_s": long_s, "short_s": short_s,
                      "long_per_frame_ms": 1000 * long["per_frame_s"], "short_per_frame_ms": 1000 * short["per_frame_s"],
                      "settings": "default model at its native size, 2 steps"},
        "stage_share": {"share": share, "audio_s": long_s},
    }


# --- host memory while streaming ----------------------------------------------------------------

class _StandInDenoiser(torch.nn.Module):
    """Real 512x512 latent shapes, negligible compute: the ETHD call returns zeros."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, sample, **_):
        return torch.zeros_like(sample[:, :, :4])


class _StandInVAE(torch.nn.Module):
    """Decodes a latent to a 512x512 frame by nearest upsampling (the real output shape)."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def decode(self, latents, num_frames):
        from types import SimpleNamespace

        return SimpleNamespace(sample=torch.nn.functional.interpolate(latents[:, :3].tanh(), scale_factor=8))


def host_memory(minutes: float) -> dict:
    """Peak RSS growth per minute: the slope between ``minutes`` and ``2 * minutes`` of video.

    Each length runs in a fresh process (:func:`host_memory_probe`), so earlier figures cannot
    raise its peak, and the slope removes fixed costs (imports, encoder buffers, one decoded
    chunk) that do not grow with the length.
    """
    import subprocess

    def probe(length: float) -> dict:
        command = [sys.executable, __file__, "--memory-probe", str(length)]
        return json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)

    short, long = probe(minutes), probe(2 * minutes)
    per_minute = (long["growth_mb"] - short["growth_mb"]) / minutes
    latent = short["latent_state_mb_per_minute"]
    return {"mb_per_minute": per_minute, "latent_state_mb_per_minute": latent, "ratio": per_minute / latent,
            "peak_growth_mb": {f"{minutes:g} min": short["growth_mb"], f"{2 * minutes:g} min": long["growth_mb"]}}


def host_memory_probe(minutes: float) -> dict:
    """RSS growth while sampling + streaming ``minutes`` of video at 512x512 latent shapes."""
    from emotivetalk_core.media.video_writer import VideoWriter
    from emotivetalk_core.sampling import Conditioning, GuidedDenoiser, Guidance, WindowedDenoiser, initial_noise, karras_sigmas, sample_euler, start_latents
    from emotivetalk_core.svd.vae_decode import decode_latents

    fps, frames = 25, int(minutes * 60 * 25)
    baseline = _peak_rss_mb()
    conditioning = Conditioning(torch.zeros(1, 4, 64, 64), torch.zeros(1, 1, 8), torch.zeros(1, 3), torch.zeros(1, frames, 5, 4),
                                torch.zeros(1, frames, 4), torch.zeros(1, 4))
    denoiser = WindowedDenoiser(GuidedDenoiser(_StandInDenoiser(), conditioning, Guidance(1.0, 1.0, 1.0)), 14)
    sigmas = karras_sigmas(2)
    latents = sample_euler(denoiser, start_latents(initial_noise(0, frames, (4, 64, 64)), sigmas), sigmas)[0]
    with tempfile.TemporaryDirectory() as folder, VideoWriter(Path(folder) / "long.mp4", fps, 512, 512) as writer:
        for block in decode_latents(_StandInVAE(), latents, chunk=14, overlap=4):
            writer.write(block)
    return {"growth_mb": _peak_rss_mb() - baseline, "latent_state_mb_per_minute": 25 * 60 * 4 * 64 * 64 * 4 / 2**20}


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# --- FLOPs ------------------------------------------------------------------------------------

def adapter_flops(config: str = "svd-xt", frames: int = 14, latent: int = 64) -> dict:
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    from emotivetalk_core.networks.ethd import ETHD

    cfg = get_config(config)
    with FakeTensorMode():
        ethd = ETHD.from_config(cfg).eval()
        a = cfg["adapter"]
        inputs = dict(sample=torch.randn(1, frames, 8, latent, latent), timestep=torch.tensor([1.0]),
                      image_embeds=torch.randn(1, 1, ethd.unet.config.cross_attention_dim),
                      added_time_ids=torch.tensor([[6.0, 127.0, 0.02]]))
        conditions = dict(lip_windows=torch.randn(1, frames, 2 * a["lip_context"] + 1, a["lip_dim"]),
                          driven_exp=torch.randn(1, frames, a["exp_dim"]), reference_exp=torch.randn(1, a["exp_dim"]))
        counts = {}
        def base():
            return ethd.unet(inputs["sample"], inputs["timestep"], inputs["image_embeds"],
                             added_time_ids=inputs["added_time_ids"], return_dict=False)

        for name, call in (("base", base), ("adapted", lambda: ethd(**inputs, **conditions))):
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                call()
            counts[name] = counter.get_total_flops() / frames
    return {"ratio": counts["adapted"] / counts["base"], "base_tflop_per_frame": counts["base"] / 1e12,
            "adapted_tflop_per_frame": counts["adapted"] / 1e12, "frames": frames}


def adapter_walltime(config: str, frames: int, latent: int, runs: int) -> dict:
    """Wall time of one ETHD call / one call of its base UNet (the same weights), no grad, random
    adapter weights (zero output projections could be special-cased) and a face mask covering
    half the frame; median over alternating runs after a warm-up."""
    from emotivetalk_core.networks.edi import TokenCrossAttention
    from emotivetalk_core.networks.ethd import ETHD, lip_windows

    torch.manual_seed(0)
    cfg = get_config(config)
    ethd = ETHD.from_config(cfg).eval()
    for module in ethd.modules():
        if isinstance(module, TokenCrossAttention):
            torch.nn.init.normal_(module.to_out.weight, std=0.02)
    a = cfg["adapter"]
    g = torch.Generator().manual_seed(1)
    sample = torch.randn(1, frames, 8, latent, latent, generator=g)
    shared = dict(timestep=torch.tensor([1.0]), image_embeds=torch.randn(1, 1, ethd.unet.config.cross_attention_dim, generator=g),
                  added_time_ids=torch.tensor([[6.0, 127.0, 0.02]]))
    mask = torch.zeros(1, 1, latent * 8, latent * 8)
    mask[..., latent * 2:latent * 6, :] = 1.0
    conditions = dict(lip_windows=lip_windows(torch.randn(1, frames, a["lip_dim"], generator=g), a["lip_context"]),
                      driven_exp=torch.randn(1, frames, a["exp_dim"], generator=g),
                      reference_exp=torch.randn(1, a["exp_dim"], generator=g), face_mask=mask)
    calls = {"base": lambda: ethd.unet(sample, shared["timestep"], shared["image_embeds"],
                                       added_time_ids=shared["added_time_ids"], return_dict=False),
             "adapted": lambda: ethd(sample, **shared, **conditions)}

    def timed(name: str) -> float:
        start = time.perf_counter()
        with torch.no_grad():
            calls[name]()
        return time.perf_counter() - start

    timed("base"), timed("adapted")  # warm-up
    times: dict[str, list[float]] = {"base": [], "adapted": []}
    for _ in range(runs):  # alternating, so drifts of a shared machine hit both alike
        for name in times:
            times[name].append(timed(name))
    # The median of each pair's ratio: a pair runs back to back, so a slow spell of the machine
    # cancels in its ratio instead of landing on one side's median.
    pairs = [adapted / base for base, adapted in zip(times["base"], times["adapted"])]
    median = {name: statistics.median(values) for name, values in times.items()}
    return {"ratio": statistics.median(pairs), "pair_ratios": pairs, "median_s": median, "runs": runs,
            "frames": frames, "latent": latent, "config": config,
            "flops_ratio": adapter_flops(config, frames, latent)["ratio"]}  # the adapters' FLOP share at these shapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small workloads, under two minutes")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--memory-probe", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        print(json.dumps(host_memory_probe(args.memory_probe)))
        return
    figures = {"machine": {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
                           "threads": torch.get_num_threads(), "quick": args.quick}}
    # First: a child process's peak RSS starts at its parent's RSS (Linux keeps ru_maxrss across
    # fork and exec), so the memory probes run before this process holds svd-xt's weights.
    figures["host_mb_per_minute"] = host_memory(0.5 if args.quick else 2.0)
    figures["adapter_flops_overhead"] = adapter_flops()
    figures["adapter_walltime_overhead_svdxt"] = adapter_walltime("svd-xt", 4, 16, runs=5 if args.quick else 9)
    figures["adapter_walltime_overhead_tiny"] = adapter_walltime("tiny", 8, 8, runs=5 if args.quick else 21)
    figures["sampler_vs_diffusers"] = sampler_vs_diffusers(runs=5, steps=4 if args.quick else 10)
    model = default_model_figures(*((12.0, 2.0) if args.quick else (60.0, 10.0)))
    figures["per_frame_60s_vs_10s"], figures["stage_share"] = model["per_frame"], model["stage_share"]
    for name, goal in GOALS.items():  # the JSON carries each figure's goal beside it
        figures[name]["goal"] = goal
    if args.json:
        print(json.dumps(figures, default=float))
        return
    flops, memory, walls = figures["adapter_flops_overhead"], figures["host_mb_per_minute"], figures["sampler_vs_diffusers"]
    lines = {
        "adapter_flops_overhead": f"{flops['ratio']:.4f} (base {flops['base_tflop_per_frame']:.3f} TFLOP/frame)",
        "sampler_vs_diffusers": f"{walls['ratio']:.3f} (with ETHD's adapters {walls['ratio_with_adapters']:.3f})",
        "per_frame_60s_vs_10s": f"{figures['per_frame_60s_vs_10s']['ratio']:.3f} ({model['per_frame']['long_s']:g} s vs "
                                f"{model['per_frame']['short_s']:g} s of audio)",
        "host_mb_per_minute": f"{memory['ratio']:.2f} ({memory['mb_per_minute']:.1f} MB/min vs the latent state's "
                              f"{memory['latent_state_mb_per_minute']:.1f})" + (" [quick: fixed costs dominate]" if args.quick else ""),
    }
    for name in ("adapter_walltime_overhead_svdxt", "adapter_walltime_overhead_tiny"):
        entry = figures[name]
        lines[name] = (f"{entry['ratio']:.3f} ({entry['frames']} frames of {entry['latent']}x{entry['latent']} latents, median of "
                       f"{entry['runs']} pairs, {min(entry['pair_ratios']):.3f}-{max(entry['pair_ratios']):.3f}: "
                       f"{entry['median_s']['adapted']:.3f} s vs {entry['median_s']['base']:.3f} s; FLOPs {entry['flops_ratio']:.3f})")
    for name, line in lines.items():
        print(f"{name:<32} {line}  [goal {GOALS.get(name, 'none, reported')}]")
    print(f"{'stage_share':<32} " + ", ".join(f"{k} {v:.0%}" for k, v in figures["stage_share"]["share"].items()))


if __name__ == "__main__":
    main()
