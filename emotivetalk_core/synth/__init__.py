"""SynthTalk: a procedural talking-face world, in which real synthetic speech (eSpeak NG, see
:mod:`emotivetalk_core.synth.speech`) drives a procedurally rendered face whose mouth follows the
timed phonemes, so that audio-to-video models can be trained and tested on data with a known,
exact audio/visual correspondence and no recorded people.
"""
