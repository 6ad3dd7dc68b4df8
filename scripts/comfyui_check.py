"""Prove the pack inside a real ComfyUI: import, node list, every shipped workflow, Cancel.

    <ComfyUI's python> scripts/comfyui_check.py --comfy-home DIR [--ui-convert PATH] [--out DIR]

``DIR`` holds ``ComfyUI/`` (a checkout with this pack in ``custom_nodes/``) and ``venv/`` (its
Python). The script starts ComfyUI headless on the CPU (or uses one already answering at
``--url``), then checks, and reports each check as PASS / FAIL:

1. the pack imported (no ``IMPORT FAILED`` in the server log) and ``/object_info`` lists every node;
2. every API workflow in ``workflows/api/`` runs to completion, and each video it writes lasts as
   long as its audio, within one frame, and as long as the uploaded speech asks for
   (``native_ksampler_style``, which names SVD-XT and an adapter file trained on it, runs on the
   stand-ins of 5: written with ``--comfy-home``, with ``--url`` that ComfyUI must have them);
3. every UI workflow in ``workflows/`` converts to API format with ComfyUI's own frontend
   (``--ui-convert``: a converter driving the frontend in headless Chromium, such as the
   workplace's ``ui_convert.py``) and runs too;
4. ``/interrupt`` during sampling, and during decoding and video writing (EmotiveTalk Save
   Video, which decodes straight into the mp4), stops the run within seconds, leaves no new file
   in ComfyUI's output folder (neither a video under its final name nor a partial one), and the
   next run succeeds;
5. ``native_equals_pack``: in one prompt on the same model, inputs, seed, steps and guidance, the
   pack's ETHD Sampler and the native path (EmotiveTalk Guider + core SamplerCustomAdvanced) with
   core euler and dpmpp_2m, also with core ModelSamplingContinuousEDM (SVD's own schedule) between
   Apply and the Guider, save their LATENTs with core SaveLatent; the downloaded LATENTs agree
   within 1e-3 relative to the latents' scale. A run with core FreeU (which changes the frames on
   purpose) must finish with finite latents; its difference is printed;
   ``native_svd_checkpoint``: the same on ComfyUI's own SVD. A random SVD checkpoint that Image Only
   Checkpoint Loader detects as SVD (SVD-XT's layout at 320 channels per level, float16) and an
   adapter file for it with random adapters are written into the ComfyUI's models folder, as
   stand-ins for the files the shipped ``native_ksampler_style`` workflow names; that workflow's chain (Image
   Only Checkpoint Loader -> Apply, Native Reference -> Conditioning -> Guider ->
   SamplerCustomAdvanced with core Karras sigmas -> core VAE Decode -> Create Video -> Save Video)
   against the pack's Model Loader (same two files) and ETHD Sampler, with core euler and dpmpp_2m
   and with core UNetSelfAttentionMultiply (a weight patch, LoRA's path) in the chain; the video
   lasts exactly as long as its audio;
6. ``fast_model``: ``basic`` on the shipped ``fast`` model with steps 0 (the widget's "the
   model's own": the 6 it was distilled for) runs, and its video lasts as long as its audio;
7. a bad input (speech whose samples are NaN, through core Load Audio) fails on the node that
   checks it, with a message naming the input, the server keeps answering, and the next run
   succeeds.

Inputs are made here and uploaded through ComfyUI's HTTP API (the pack never writes into
ComfyUI's input folder): the shipped portrait and speech (cut to ``--seconds``), a long speech
for the streaming workflow, a 1280x720 frame with the face off-centre for crop + paste-back,
for two_speakers a 1280x720 frame with two people side by side and a second, shorter speech,
and, for the upscale chain, a small random RealESRGAN-Compact model written to
``models/upscale_models`` of the given ComfyUI (random weights: it proves the wiring, not
quality), as are the SVD stand-ins of 5 (``models/checkpoints``, ``models/emotivetalk``). Without
a ComfyUI to talk to, it says so and exits with status 2, checking nothing.

Run it with ComfyUI's Python: it needs aiohttp (ComfyUI's own dependency) and av.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from emotivetalk_core.media.audio import frame_count, load_audio
from emotivetalk_core.media.video_reader import probe

UPSCALE_MODEL = "upscale_x2.safetensors"
UPLOADS = ("portrait.png", "speech.wav", "emotion.png", "long_speech.wav", "wide_portrait.png", "nan_speech.wav",
           "two_faces.png", "second_speech.wav")
# The second face of two_faces.png: person 3 of the demo assets' world (scripts/make_demo_assets.py),
# the next after the demo portrait's person with a flat background that OpenCV's face detector finds.
SECOND_PERSON = 3373772569
SECOND_SPEECH = 0.6  # second_speech.wav's length as a fraction of speech.wav's (two_speakers' Speech 1 is the longer)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    seconds: float = 0.0
    videos: list = field(default_factory=list)


# --- inputs -------------------------------------------------------------------------------------

def make_inputs(folder: Path, seconds: float, long_seconds: float) -> dict[str, Path]:
    """The files the shipped workflows load, made from the pack's own demo assets."""
    from PIL import Image

    assets = ROOT / "emotivetalk_core" / "assets"
    speech = load_audio(assets / "speech.wav")  # 16 kHz mono float32
    portrait = Image.open(assets / "portrait.png").convert("RGB")
    files = {name: folder / name for name in UPLOADS}
    portrait.save(files["portrait.png"])
    # A different expression source than the portrait itself: the portrait mirrored.
    portrait.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(files["emotion.png"])
    write_wav(files["speech.wav"], speech[: round(seconds * 16000)])
    repeats = math.ceil(long_seconds * 16000 / len(speech))
    write_wav(files["long_speech.wav"], np.tile(speech, repeats)[: round(long_seconds * 16000)])
    wide = Image.new("RGB", (1280, 720), (70, 80, 90))
    wide.paste(portrait.resize((384, 384)), (780, 250))  # face right of centre and low
    wide.save(files["wide_portrait.png"])
    # two_speakers: the demo person left, a second person of its world right, far enough apart that
    # the two face crops (2.2x the face box) do not touch; the face boxes are the workflow's box widgets.
    two = Image.new("RGB", (1280, 720), (70, 80, 90))
    two.paste(portrait.resize((384, 384)), (128, 168))
    two.paste(second_person(portrait.size[0]).resize((384, 384)), (768, 168))
    two.save(files["two_faces.png"])
    said = round(seconds * 16000)
    # Other words than speech.wav (the sentence's end) and shorter, so the two clips differ in length.
    write_wav(files["second_speech.wav"], speech[len(speech) - round(SECOND_SPEECH * len(speech[:said])):])
    nan_speech = speech[: round(seconds * 16000)].copy()
    nan_speech[100:200] = np.nan
    write_float_wav(files["nan_speech.wav"], nan_speech)
    return files


def second_person(size: int):
    """SECOND_PERSON's neutral portrait, ``size`` pixels square, rendered as the demo portrait is."""
    from PIL import Image

    from emotivetalk_core.synth import world
    from emotivetalk_core.synth.render import render

    who = world.identity(SECOND_PERSON)
    return Image.fromarray(render(who, world.still(who, world.Emotion("neutral")).params, size).rgb[0])


def write_wav(path: Path, mono: np.ndarray, rate: int = 16000) -> None:
    import wave

    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes((np.clip(mono, -1, 1) * 32767).round().astype("<i2").tobytes())


def write_float_wav(path: Path, mono: np.ndarray, rate: int = 16000) -> None:
    """A 32-bit float WAV (format 3), written by hand: the wave module writes integer PCM only."""
    import struct

    data = mono.astype("<f4").tobytes()
    header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + len(data), b"WAVE", b"fmt ", 16, 3, 1, rate, rate * 4, 4, 32,
                         b"data", len(data))
    path.write_bytes(header + data)


def write_upscale_model(comfy_home: Path) -> Path:
    """A tiny RealESRGAN-Compact x2 (SRVGGNetCompact) with random weights, safetensors.

    Compact adds the nearest-upscaled input to its output, so small weights give an image close
    to a plain 2x upscale: the chain's frames stay recognisable.
    """
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    features, convs, scale = 8, 2, 2
    shapes = [(features, 3)] + [(features, features)] * convs + [(3 * scale * scale, features)]
    state, index = {}, 0
    for number, (out_channels, in_channels) in enumerate(shapes):
        state[f"body.{index}.weight"] = 0.01 * torch.randn(out_channels, in_channels, 3, 3, generator=generator)
        state[f"body.{index}.bias"] = torch.zeros(out_channels)
        index += 1
        if number < len(shapes) - 1:  # a PReLU after every conv but the last
            state[f"body.{index}.weight"] = torch.full((out_channels,), 0.25)
            index += 1
    path = comfy_home / "ComfyUI" / "models" / "upscale_models" / UPSCALE_MODEL
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


# --- the server ---------------------------------------------------------------------------------

def start_server(comfy_home: Path, port: int, log_path: Path) -> subprocess.Popen:
    python = comfy_home / "venv" / "bin" / "python"
    main = comfy_home / "ComfyUI" / "main.py"
    for needed in (python, main):
        if not needed.exists():
            raise SystemExit(f"not a ComfyUI home: {needed} is missing (expected ComfyUI/ and venv/ under {comfy_home})")
    log = log_path.open("w")
    return subprocess.Popen([str(python), str(main), "--cpu", "--listen", "127.0.0.1", "--port", str(port)],
                            cwd=main.parent, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


class Client:
    """ComfyUI's HTTP + websocket API (what its own frontend uses)."""

    def __init__(self, url: str):
        import aiohttp

        self.url = url.rstrip("/")
        self.client_id = uuid.uuid4().hex
        self.session = aiohttp.ClientSession()
        self.ws = None

    async def close(self):
        if self.ws is not None:
            await self.ws.close()
        await self.session.close()

    async def get(self, path: str):
        async with self.session.get(self.url + path) as response:
            response.raise_for_status()
            return await response.json()

    async def wait_until_up(self, timeout: float) -> None:
        import aiohttp

        end = time.monotonic() + timeout
        while True:
            try:
                await self.get("/system_stats")
                return
            except (aiohttp.ClientError, OSError):
                if time.monotonic() > end:
                    raise SystemExit(f"no ComfyUI answered at {self.url} within {timeout:.0f} s")
                await asyncio.sleep(0.5)

    async def connect(self) -> None:
        self.ws = await self.session.ws_connect(f"{self.url}/ws?clientId={self.client_id}", max_msg_size=0)

    async def upload(self, path: Path) -> None:
        import aiohttp

        form = aiohttp.FormData()
        form.add_field("image", path.read_bytes(), filename=path.name)
        form.add_field("type", "input")
        form.add_field("overwrite", "true")
        async with self.session.post(self.url + "/upload/image", data=form) as response:
            if response.status != 200:
                raise RuntimeError(f"upload of {path.name} failed: {response.status} {await response.text()}")

    async def submit(self, workflow: dict) -> str:
        body = {"prompt": workflow, "client_id": self.client_id}
        async with self.session.post(self.url + "/prompt", json=body) as response:
            answer = await response.json()
            if response.status != 200:
                raise RuntimeError(f"rejected by /prompt: {json.dumps(answer)[:2000]}")
            return answer["prompt_id"]

    async def events(self, prompt_id: str):
        """This prompt's websocket messages, until it finishes one way or another."""
        async for message in self.ws:
            if message.type.name != "TEXT":
                continue  # binary previews
            event = json.loads(message.data)
            data = event.get("data", {})
            if data.get("prompt_id") != prompt_id:
                continue
            yield event
            if event["type"] in ("execution_success", "execution_error", "execution_interrupted"):
                return

    async def fresh(self) -> None:
        """Drop ComfyUI's node cache and models, so the next run executes every node for real
        (an identical earlier prompt would otherwise be answered from the cache)."""
        async with self.session.post(self.url + "/free", json={"unload_models": True, "free_memory": True}) as response:
            response.raise_for_status()
        await asyncio.sleep(1.0)  # the worker applies the flags between prompts

    async def interrupt(self) -> None:
        async with self.session.post(self.url + "/interrupt") as response:
            response.raise_for_status()

    async def history(self, prompt_id: str) -> dict:
        # The success message goes out before the worker files the history entry: wait for it.
        for _ in range(120):
            history = (await self.get(f"/history/{prompt_id}")).get(prompt_id)
            if history is not None:
                return history
            await asyncio.sleep(0.5)
        raise RuntimeError(f"prompt {prompt_id} finished but never appeared in /history")

    async def outputs(self, prompt_id: str, suffix: str = ".mp4") -> dict[str, list[dict]]:
        """The files ending in ``suffix`` that the prompt wrote, by the id of the node that wrote them."""
        files = {}
        for node_id, node_output in (await self.history(prompt_id)).get("outputs", {}).items():
            for entries in node_output.values():
                if isinstance(entries, list):
                    found = [e for e in entries if isinstance(e, dict) and str(e.get("filename", "")).endswith(suffix)]
                    files.setdefault(node_id, []).extend(found)
        return files

    async def download(self, entry: dict, folder: Path) -> Path:
        from urllib.parse import urlencode

        query = urlencode({k: entry.get(k, "") for k in ("filename", "subfolder", "type")})
        async with self.session.get(f"{self.url}/view?{query}") as response:
            response.raise_for_status()
            path = folder / entry["filename"]
            path.write_bytes(await response.read())
            return path


# --- checks -------------------------------------------------------------------------------------

def pack_node_ids() -> list[str]:
    import nodes

    return sorted(nodes.NODE_CLASS_MAPPINGS)


async def check_import(client: Client, log_path: Path | None) -> Check:
    info = await client.get("/object_info")
    missing = [node for node in pack_node_ids() if node not in info]
    problems = [f"/object_info lacks {missing}"] if missing else []
    if log_path is not None:
        log = log_path.read_text(errors="replace")
        if "IMPORT FAILED" in log:
            problems.append("the server log says IMPORT FAILED: " + " | ".join(line for line in log.splitlines() if "IMPORT FAILED" in line))
        if "ComfyUI-EmotiveTalk" not in log:
            problems.append("the server log never mentions custom_nodes/ComfyUI-EmotiveTalk: is the pack installed?")
    listed = sum(node in info for node in pack_node_ids())
    return Check("import + /object_info", not problems, "; ".join(problems) or f"all {listed} EmotiveTalk nodes listed")


def expected_frames(audio_path: Path, fps: float) -> int:
    return frame_count(len(load_audio(audio_path)), Fraction(str(fps)))


def check_video(path: Path, audio_path: Path) -> tuple[bool, str, dict]:
    facts = probe(path)
    fps = float(facts["fps"])
    wanted = expected_frames(audio_path, fps)
    gap = abs(facts["duration"] - (facts["audio_duration"] or 0.0))
    ok = facts["audio_duration"] is not None and gap <= 1 / fps + 1e-6 and facts["frames"] == wanted
    detail = (f"{path.name}: {facts['frames']} frames ({wanted} expected) {facts['width']}x{facts['height']}, "
              f"video {facts['duration']:.3f} s, audio {facts['audio_duration']} s")
    return ok, detail, {**facts, "fps": fps, "file": path.name}


async def submit_and_wait(client: Client, name: str, workflow: dict, timeout: float):
    """Run a workflow to its end: ``(prompt_id, seconds, None)``, or ``(None, seconds, failed Check)``."""
    await client.fresh()
    start = time.monotonic()
    try:
        prompt_id = await client.submit(workflow)
        finished = await asyncio.wait_for(_last_event(client, prompt_id), timeout)
    except (RuntimeError, asyncio.TimeoutError) as error:
        seconds = time.monotonic() - start
        return None, seconds, Check(name, False, f"{type(error).__name__}: {error}", seconds)
    seconds = time.monotonic() - start
    if finished["type"] != "execution_success":
        data = finished["data"]
        return None, seconds, Check(name, False, f"{finished['type']}: {data.get('node_type')} {data.get('exception_message')}",
                                    seconds)
    return prompt_id, seconds, None


async def run_workflow(client: Client, name: str, workflow: dict, audio_path: Path, out: Path,
                       timeout: float) -> Check:
    prompt_id, seconds, failed = await submit_and_wait(client, name, workflow, timeout)
    if failed:
        return failed
    try:
        videos = [await client.download(entry, out) for entries in (await client.outputs(prompt_id)).values()
                  for entry in entries]
    except RuntimeError as error:
        return Check(name, False, str(error), seconds)
    if not videos:
        return Check(name, False, "finished without writing an mp4", seconds)
    results = [check_video(video, audio_path) for video in videos]
    return Check(name, all(ok for ok, _, _ in results), "; ".join(d for _, d, _ in results), seconds,
                 [facts for _, _, facts in results])


async def run_shipped(client: Client, args, name: str, workflow: dict, inputs: dict[str, Path], out: Path) -> Check:
    """A shipped workflow (API or converted from UI) on the check's inputs and, for native_ksampler_style, on
    the SVD stand-ins (written into the ComfyUI under test; with --url they must be there already)."""
    workflow = on_stand_ins(workflow, args.comfy_home)
    return await run_workflow(client, name, workflow, audio_of(workflow, inputs), out, args.timeout)


def fast_model_workflow() -> dict:
    """``basic`` on the shipped ``fast`` model, its steps left to the model (0)."""
    workflow = json.loads((ROOT / "workflows" / "api" / "basic.json").read_text())
    generate = next(node for node in workflow.values() if node["class_type"] == "EmotiveTalkGenerate")
    generate["inputs"].update(model_name="fast", steps=0)
    return workflow


async def _last_event(client: Client, prompt_id: str) -> dict:
    last = None
    async for event in client.events(prompt_id):
        last = event
    return last


def audio_of(workflow: dict, inputs: dict[str, Path]) -> Path:
    """The speech the workflow's video must last as long as: its Load Audio's file or, when it loads
    several (two_speakers mixes two with core Audio Merge, the longer first), the longest of them."""
    names = [node["inputs"]["audio"] for node in workflow.values() if node["class_type"] == "LoadAudio"]
    if not names:
        raise ValueError("expected a LoadAudio node, found none")
    return max((inputs[name] for name in names), key=lambda path: len(load_audio(path)))


def convert_ui(converter: Path, python: Path, ui_path: Path, url: str, folder: Path) -> dict:
    api_path = folder / f"{ui_path.stem}.from_ui.json"
    subprocess.run([str(python), str(converter), "ui2api", str(ui_path), str(api_path), "--server", url],
                   check=True, capture_output=True, text=True, timeout=180)
    return json.loads(api_path.read_text())


# Where Cancel is pressed: the nodes whose progress events mark the phase, and the least progress
# value seen first (sampling: two UNet calls in; decoding and writing: the first frames written).
STOP_WITHIN = 30.0  # seconds from /interrupt to the end of the run (one UNet call or one decode chunk, on a CPU)
INTERRUPT_PHASES = {
    "sampling": ({"EmotiveTalkGenerate", "EmotiveTalkETHDSampler"}, 2, "basic.json"),
    "decoding and writing": ({"EmotiveTalkSaveVideo"}, 1, "long_audio_streaming.json"),
}


def output_files(comfy_home: Path | None) -> set[str] | None:
    """Every file under ComfyUI's output folder (hidden partial files too), or None if unknown."""
    if comfy_home is None:
        return None
    folder = Path(comfy_home) / "ComfyUI" / "output"
    return {str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()} if folder.is_dir() else set()


async def check_interrupt(client: Client, phase: str, inputs: dict[str, Path], out: Path, timeout: float,
                          comfy_home: Path | None) -> Check:
    """Cancel in ``phase``; nothing new may stay in the output folder; then the same workflow must succeed."""
    node_types, least, workflow_name = INTERRUPT_PHASES[phase]
    workflow = json.loads((ROOT / "workflows" / "api" / workflow_name).read_text())
    name = f"interrupt during {phase}"
    await client.fresh()
    before = output_files(comfy_home)
    start = time.monotonic()
    prompt_id = await client.submit(workflow)
    watched = {nid for nid, node in workflow.items() if node["class_type"] in node_types}
    interrupted_at, finished = None, None
    async for event in client.events(prompt_id):
        data = event["data"]
        if event["type"] == "progress" and data.get("node") in watched and data["value"] >= least and interrupted_at is None:
            await client.interrupt()
            interrupted_at = time.monotonic()
        finished = event
    if interrupted_at is None:
        return Check(name, False, f"the run ended ({finished['type']}) before {phase} progress was seen", time.monotonic() - start)
    stop_seconds = time.monotonic() - interrupted_at
    if finished["type"] != "execution_interrupted":
        return Check(name, False, f"after /interrupt the run ended with {finished['type']}", time.monotonic() - start)
    if stop_seconds > STOP_WITHIN:
        return Check(name, False, f"stopped only {stop_seconds:.1f} s after /interrupt (allowed {STOP_WITHIN} s)",
                     time.monotonic() - start)
    left = None if before is None else sorted(output_files(comfy_home) - before)
    if left:
        return Check(name, False, f"the interrupted run left files in the output folder: {left}", time.monotonic() - start)
    rerun = await run_workflow(client, f"rerun after {name}", workflow, audio_of(workflow, inputs), out, timeout)
    files = "not checked (no --comfy-home)" if left is None else "no file left in the output folder"
    return Check(name, rerun.ok, f"stopped {stop_seconds:.1f} s after /interrupt; {files}; next run: {rerun.detail}",
                 time.monotonic() - start, rerun.videos)


async def check_bad_input(client: Client, inputs: dict[str, Path], out: Path, timeout: float) -> Check:
    """Speech with NaN samples: an error on EmotiveTalk Generate naming its 'audio' input, not a
    crashed server or NaN frames; then the good speech runs."""
    workflow = json.loads((ROOT / "workflows" / "api" / "basic.json").read_text())
    bad = json.loads(json.dumps(workflow))
    for node in bad.values():
        if node["class_type"] == "LoadAudio":
            node["inputs"]["audio"] = "nan_speech.wav"
    await client.fresh()
    start = time.monotonic()
    prompt_id = await client.submit(bad)
    finished = await asyncio.wait_for(_last_event(client, prompt_id), timeout)
    data = finished["data"]
    message = str(data.get("exception_message", ""))
    shown = (finished["type"] == "execution_error" and data.get("node_type") == "EmotiveTalkGenerate"
             and "audio" in message and "NaN" in message)
    alive = "comfyui_version" in (await client.get("/system_stats")).get("system", {})
    rerun = await run_workflow(client, "rerun after a bad input", workflow, audio_of(workflow, inputs), out, timeout)
    detail = (f"{finished['type']} on {data.get('node_type')}: {message.strip()[:200]!r}; server answering: {alive}; "
              f"next run: {rerun.detail}")
    return Check("bad input shown on the node", shown and alive and rerun.ok, detail, time.monotonic() - start, rerun.videos)


# The native path against the pack's own, in one prompt on the same nodes upstream (model, reference,
# lip, expression): each pair differs only in who samples. Same frames are expected from the same
# sampler (ComfyUI's UNet rounds the time embedding differently from diffusers', so not bitwise).
NATIVE_TOLERANCE = 1e-3  # max |native - pack| relative to the latents' scale (as tests/test_native_comfy.py)
NATIVE_RUNS = {  # name: (core sampler, core model patch between Apply and the Guider or None, same frames expected)
    "euler": ("euler", None, True),
    "dpmpp_2m": ("dpmpp_2m", None, True),
    # SVD's own noise schedule (v-prediction EDM, sigma 0.002..700) set again by a core patch: the
    # chain must pass the patched clone's adapters and streams through, and leave the frames alone.
    "euler + ModelSamplingContinuousEDM": ("euler", ("ModelSamplingContinuousEDM",
                                                     {"sampling": "v_prediction", "sigma_max": 700.0, "sigma_min": 0.002}), True),
    # A patch that changes the UNet's output blocks on purpose: it must run; its frames differ.
    "euler + FreeU": ("euler", ("FreeU", {"b1": 1.1, "b2": 1.2, "s1": 0.9, "s2": 0.2}), False),
}


def native_comparison(workflow: dict, steps: int, runs: dict) -> tuple[dict, dict[str, tuple[str, str, bool]]]:
    """The API prompt ``workflow`` (a native workflow with the pack's Model Loader upstream, and
    Guider + KSamplerSelect + SamplerCustomAdvanced) with the pack's ETHD Sampler (on the Model
    Loader's model and the Conditioning's inputs) and SamplerCustomAdvanced for every run of
    ``runs`` (NATIVE_RUNS' form), each LATENT saved by core SaveLatent; what decoded the workflow's
    own sampler decodes the first run. Also ``{run: (pack SaveLatent id, native SaveLatent id, same
    frames expected)}``."""
    workflow = json.loads(json.dumps(workflow))
    by_type = {node["class_type"]: node_id for node_id, node in workflow.items()}
    ids = iter(range(max(int(k) for k in workflow) + 1, 10**6))  # never an id of the workflow, removed ones included
    guider = workflow[by_type["EmotiveTalkGuider"]]["inputs"]
    sampled_by_workflow = workflow[by_type["SamplerCustomAdvanced"]]["inputs"]
    for replaced in ("EmotiveTalkGuider", "KSamplerSelect", "SamplerCustomAdvanced"):
        del workflow[by_type[replaced]]
    apply_id, conditioning_id = by_type["EmotiveTalkApply"], by_type["EmotiveTalkConditioning"]
    conditioning = workflow[conditioning_id]["inputs"]
    if conditioning.get("fps", 0) != 0 or "face_mask" in conditioning:  # the ETHD Sampler has neither
        raise ValueError("native_comparison needs Conditioning's fps at 0 and no face_mask: the ETHD Sampler cannot match them")
    sigmas, noise = sampled_by_workflow["sigmas"], sampled_by_workflow["noise"]
    workflow[sigmas[0]]["inputs"]["steps"] = steps
    seed = workflow[noise[0]]["inputs"]["noise_seed"]

    def add(class_type: str, inputs: dict) -> str:
        node_id = str(next(ids))
        workflow[node_id] = {"class_type": class_type, "inputs": inputs}
        return node_id

    pack_latents, pairs, first = {}, {}, None
    for run, (sampler, patch, same_expected) in runs.items():
        if sampler not in pack_latents:
            pack = add("EmotiveTalkETHDSampler", {
                "model": [by_type["EmotiveTalkModelLoader"], 0], "reference": conditioning["reference"],
                "lip": conditioning["lip"], "expression": conditioning["expression"], "steps": steps, "sampler": sampler,
                "seed": seed, "motion": conditioning["motion"], "lip_context": conditioning["lip_context"],
                **{k: guider[k] for k in ("reference_strength", "lip_strength", "expression_strength", "window", "overlap")}})
            pack_latents[sampler] = add("SaveLatent", {"samples": [pack, 0], "filename_prefix": f"emotivetalk_check/pack_{sampler}"})
        model = [apply_id, 0]
        if patch is not None:
            model = [add(patch[0], {"model": model, **patch[1]}), 0]
        run_guider = add("EmotiveTalkGuider", {**guider, "model": model})
        sampled = add("SamplerCustomAdvanced", {
            "noise": noise, "guider": [run_guider, 0], "sampler": [add("KSamplerSelect", {"sampler_name": sampler}), 0],
            "sigmas": sigmas, "latent_image": [conditioning_id, 2]})
        first = first or sampled
        prefix = "emotivetalk_check/native_" + run.replace(" + ", "_")
        native = add("SaveLatent", {"samples": [sampled, 0], "filename_prefix": prefix})
        pairs[run] = (pack_latents[sampler], native, same_expected)
    for node in workflow.values():  # the decoder of the workflow's own sampler decodes the first run
        for name, value in node["inputs"].items():
            if isinstance(value, list) and value[0] == by_type["SamplerCustomAdvanced"]:
                node["inputs"][name] = [first, value[1]]
    return workflow, pairs


# The native chain on ComfyUI's own SVD: a random SVD checkpoint that Image Only Checkpoint
# Loader detects as SVD, and an EmotiveTalk adapter file for it, written into the ComfyUI under test.
SVD_CHECKPOINT = "emotivetalk_check_svd_narrow_v1.safetensors"  # models/checkpoints
SVD_ADAPTERS = "emotivetalk_check_adapters_narrow_v1.safetensors"  # models/emotivetalk
# The shipped native_ksampler_style workflow names the files a user would have (SVD-XT and an adapter file
# trained on it); the check runs it on these stand-ins instead.
SVD_STAND_INS = {"svd_xt.safetensors": SVD_CHECKPOINT, "emotivetalk_svd_xt.safetensors": SVD_ADAPTERS}
SVD_RUNS = {
    "euler": ("euler", None, True),
    "dpmpp_2m": ("dpmpp_2m", None, True),
    # Weight patches (LoRA's path) on the self-attention outputs: FreeU would not act, it scales
    # only 640- and 1280-channel blocks.
    "euler + UNetSelfAttentionMultiply": ("euler", ("UNetSelfAttentionMultiply", {"q": 1.0, "k": 1.0, "v": 1.0, "out": 0.8}),
                                          False),
}


def narrow_svd_config() -> dict:
    """SVD-XT with 320 channels at every UNet level (212 M UNet parameters, not 1.5 B). ComfyUI's
    loader still detects it as SVD: its detection reads the first level's width, the context and
    ADM widths and the transformer depths, which stay SVD-XT's; so do the VAE and the ViT-H."""
    from emotivetalk_core.configs import get_config

    config = get_config("svd-xt")
    return {"unet": {"block_out_channels": [320] * 4, "num_attention_heads": [5] * 4},
            "vae": config["vae"], "image_encoder": config["image_encoder"]}


def write_svd_models(comfy_home: Path) -> None:
    """The checkpoint (random weights, float16, Stability's single-file layout) and an adapter file
    for it: the default model's adapter widths (so the default V-AID drives it) with random non-zero
    weights (so the comparison sees the adapters act), 64x64 frames. Written once per ComfyUI."""
    import torch

    from emotivetalk_core.bundles import resolve_model_file
    from emotivetalk_core.checkpoints import read_metadata, save_model_file
    from emotivetalk_core.networks.ethd import ETHD
    from emotivetalk_core.svd.build import build_image_encoder, build_unet, build_vae
    from emotivetalk_core.svd.convert import diffusers_to_stability
    from safetensors.torch import save_file

    models = comfy_home / "ComfyUI" / "models"
    checkpoint, adapters = models / "checkpoints" / SVD_CHECKPOINT, models / "emotivetalk" / SVD_ADAPTERS
    if checkpoint.is_file() and adapters.is_file():
        return
    torch.manual_seed(0)
    config = narrow_svd_config()
    default = read_metadata(resolve_model_file("default"))[0]["adapter"]  # its stream widths and settings
    ethd = ETHD(build_unet(config["unet"]), default["adapter"])
    state = diffusers_to_stability(ethd.unet.state_dict(), build_vae(config["vae"]).state_dict(),
                                   build_image_encoder(config["image_encoder"]).state_dict())
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.half().contiguous() for k, v in state.items()}, str(checkpoint))
    adapter_state = {k: 0.02 * torch.randn_like(v) for k, v in ethd.adapter_state_dict().items()}
    settings = {**default["ethd"], "resolution": [64, 64]}
    save_model_file(adapters, {"adapter": (adapter_state, {"adapter": ethd.adapter_config, "ethd": settings})},
                    {"base_config": config, "trained": False, "note": "comfyui_check: random adapters for a random SVD"})


def uses_stand_ins(workflow: dict) -> bool:
    return any(isinstance(value, str) and value in SVD_STAND_INS for node in workflow.values() for value in node["inputs"].values())


def with_stand_ins(workflow: dict) -> dict:
    """The API prompt ``workflow`` with the check's SVD files in place of native_ksampler_style's."""
    return {node_id: {**node, "inputs": {name: SVD_STAND_INS.get(value, value) if isinstance(value, str) else value
                                         for name, value in node["inputs"].items()}}
            for node_id, node in workflow.items()}


def on_stand_ins(workflow: dict, comfy_home: str | Path | None = None) -> dict:
    """``workflow`` on the check's SVD stand-ins, written first into the ComfyUI at ``comfy_home``
    when it names them (with --url they must be there already)."""
    if comfy_home and uses_stand_ins(workflow):
        write_svd_models(Path(comfy_home))
    return with_stand_ins(workflow)


def svd_checkpoint_workflow(comfy_home: str | Path | None = None) -> dict:
    """The shipped native_ksampler_style workflow (Image Only Checkpoint Loader -> Apply and Native Reference ->
    Conditioning -> Guider -> SamplerCustomAdvanced with core Karras sigmas -> core VAE Decode ->
    Create Video -> Save Video) on the stand-ins, plus the pack's Model Loader on the same two files
    for the pack's own sampler."""
    workflow = on_stand_ins(json.loads((ROOT / "workflows" / "api" / "native_ksampler_style.json").read_text()), comfy_home)
    workflow[str(max(int(k) for k in workflow) + 1)] = {
        "class_type": "EmotiveTalkModelLoader", "inputs": {"model_name": SVD_ADAPTERS, "base_svd": SVD_CHECKPOINT}}
    saver = next(node for node in workflow.values() if node["class_type"] == "SaveVideo")
    saver["inputs"]["filename_prefix"] = "emotivetalk_check/native_svd_checkpoint"
    return workflow


def read_latent(path: Path) -> np.ndarray:
    from safetensors.numpy import load_file

    return load_file(str(path))["latent_tensor"]


async def check_native_equals_pack(client: Client, name: str, workflow: dict, runs: dict, audio: Path, out: Path,
                                   steps: int, timeout: float) -> Check:
    """The native path (SamplerCustomAdvanced + EmotiveTalk Guider) against the pack's ETHD Sampler,
    same model, inputs, seed, steps and guidance: the saved LATENTs within NATIVE_TOLERANCE, and the
    first run's video as long as the audio."""
    workflow, pairs = native_comparison(workflow, steps, runs)
    prompt_id, seconds, failed = await submit_and_wait(client, name, workflow, timeout)
    if failed:
        return failed
    files = await client.outputs(prompt_id, ".latent")
    folder = out / "latents"
    folder.mkdir(exist_ok=True)
    latents = {node_id: read_latent(await client.download(entries[0], folder)) for node_id, entries in files.items() if entries}
    ok, parts = True, []
    for run, (pack_id, native_id, same_expected) in pairs.items():
        pack, native = latents.get(pack_id), latents.get(native_id)
        if pack is None or native is None:
            ok, parts = False, parts + [f"{run}: no saved LATENT"]
            continue
        if pack.shape != native.shape or not np.isfinite(native).all():
            ok, parts = False, parts + [f"{run}: native {native.shape} finite={np.isfinite(native).all()}, pack {pack.shape}"]
            continue
        scale = max(1.0, float(np.abs(pack).max()))
        difference = float(np.abs(native.astype(np.float64) - pack).max()) / scale
        if same_expected:
            ok = ok and difference <= NATIVE_TOLERANCE
            verdict = f"{difference:.2e} (tolerance {NATIVE_TOLERANCE:.0e})"
        else:
            verdict = f"{difference:.2e} (a patch that changes the output: not compared, finite)"
        parts.append(f"{run}: max |native - pack| / max(1, max |pack| = {scale:.2f}) = {verdict}")
    videos = [await client.download(entry, out) for entries in (await client.outputs(prompt_id)).values() for entry in entries]
    results = [check_video(video, audio) for video in videos]
    ok = ok and len(results) == 1 and results[0][0]
    parts.append("; ".join(detail for _, detail, _ in results) or "no video written")
    shape = next(iter(latents.values())).shape if latents else None
    return Check(name, ok, f"{steps} steps, LATENT {shape}; " + "; ".join(parts), seconds,
                 [facts for _, _, facts in results])


# --- main ---------------------------------------------------------------------------------------

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfy-home", type=Path, default=os.environ.get("COMFY_HOME"),
                        help="folder holding ComfyUI/ and venv/ (default: $COMFY_HOME)")
    parser.add_argument("--url", help="use a ComfyUI already running here instead of starting one")
    parser.add_argument("--port", type=int, default=8199, help="port for the server this script starts")
    parser.add_argument("--ui-convert", type=Path, help="UI->API converter using ComfyUI's frontend (ui_convert.py)")
    parser.add_argument("--out", type=Path, help="folder for videos, logs and summary.json (default: a temp folder)")
    parser.add_argument("--only", help="comma-separated workflow names, fast_model, native_equals_pack and native_svd_checkpoint "
                                       "(default: all)")
    parser.add_argument("--seconds", type=float, default=1.0, help="length of the uploaded speech.wav")
    parser.add_argument("--long-seconds", type=float, default=8.0, help="length of long_speech.wav")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed per workflow run")
    parser.add_argument("--no-interrupt", action="store_true", help="skip the /interrupt checks")
    parser.add_argument("--compare-steps", type=int, default=4,
                        help="sampling steps of the native comparisons (the pack's and the native sampler)")
    return parser.parse_args(argv)


def selected(folder: Path, only: str | None) -> list[Path]:
    paths = sorted(folder.glob("*.json"))
    if only:
        names = set(only.split(","))
        paths = [p for p in paths if p.stem in names]
    return paths


async def run_checks(args, client: Client, log_path: Path | None, out: Path) -> list[Check]:
    await client.wait_until_up(300)
    await client.connect()
    checks = [await check_import(client, log_path)]
    inputs = make_inputs(out, args.seconds, args.long_seconds)
    for path in inputs.values():
        await client.upload(path)
    if args.comfy_home:
        write_upscale_model(Path(args.comfy_home))
    for path in selected(ROOT / "workflows" / "api", args.only):
        checks.append(await run_shipped(client, args, f"api/{path.stem}", json.loads(path.read_text()), inputs, out))
        print(_line(checks[-1]), flush=True)
    if not args.only or "fast_model" in args.only.split(","):
        workflow = fast_model_workflow()
        checks.append(await run_workflow(client, "fast_model", workflow, audio_of(workflow, inputs), out, args.timeout))
        print(_line(checks[-1]), flush=True)
    # Built only when selected: native_svd_checkpoint writes its stand-ins into the ComfyUI under test.
    comparisons = {"native_equals_pack": (lambda: json.loads((ROOT / "workflows" / "api" / "native_default_model.json").read_text()),
                                          NATIVE_RUNS)}
    if args.comfy_home:
        comparisons["native_svd_checkpoint"] = (lambda: svd_checkpoint_workflow(args.comfy_home), SVD_RUNS)
    for name, (build, runs) in comparisons.items():
        if not args.only or name in args.only.split(","):
            workflow = build()
            checks.append(await check_native_equals_pack(client, name, workflow, runs, audio_of(workflow, inputs), out,
                                                         args.compare_steps, args.timeout))
            print(_line(checks[-1]), flush=True)
    if args.ui_convert:
        python = Path(args.comfy_home) / "venv" / "bin" / "python" if args.comfy_home else Path(sys.executable)
        for path in selected(ROOT / "workflows", args.only):
            try:
                workflow = convert_ui(args.ui_convert, python, path, client.url, out)
            except subprocess.CalledProcessError as error:
                checks.append(Check(f"ui/{path.stem}", False, f"conversion failed: {error.stderr[-1000:]}"))
                continue
            checks.append(await run_shipped(client, args, f"ui/{path.stem}", workflow, inputs, out))
            print(_line(checks[-1]), flush=True)
    if not args.no_interrupt:
        for phase in INTERRUPT_PHASES:
            checks.append(await check_interrupt(client, phase, inputs, out, args.timeout, args.comfy_home))
            print(_line(checks[-1]), flush=True)
    checks.append(await check_bad_input(client, inputs, out, args.timeout))
    print(_line(checks[-1]), flush=True)
    return checks


def _line(check: Check) -> str:
    return f"{'PASS' if check.ok else 'FAIL'}  {check.name} ({check.seconds:.0f} s): {check.detail}"


async def _main(args) -> int:
    out = args.out or Path(tempfile.mkdtemp(prefix="emotivetalk-comfyui-"))
    out.mkdir(parents=True, exist_ok=True)
    server, log_path = None, None
    if args.url is None:
        log_path = out / "server.log"
        server = start_server(Path(args.comfy_home), args.port, log_path)
    client = Client(args.url or f"http://127.0.0.1:{args.port}")
    try:
        checks = await run_checks(args, client, log_path, out)
        version = (await client.get("/system_stats"))["system"].get("comfyui_version", "unknown")
    finally:
        await client.close()
        if server is not None:
            server.terminate()
            server.wait(30)
    summary = {"comfyui_version": version, "passed": sum(c.ok for c in checks), "failed": sum(not c.ok for c in checks),
               "checks": [asdict(c) for c in checks]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"ComfyUI {version}: {summary['passed']} passed, {summary['failed']} failed (details: {out / 'summary.json'})")
    return 0 if summary["failed"] == 0 else 1


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.comfy_home is None and args.url is None:
        print("No ComfyUI to check against: pass --comfy-home DIR (or set COMFY_HOME) or --url. Nothing was checked.",
              file=sys.stderr)
        return 2
    return asyncio.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
