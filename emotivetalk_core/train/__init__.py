"""Training: preprocessing real talking-head video into shards, and training every component.

Never imported by the nodes or the inference pipeline; entry point ``python -m emotivetalk_core.train``.
"""
