"""The frozen "Audio Encoder" of EmotiveTalk: speech features for every video frame.

``base`` is what every encoder is (``encode`` features at video frame centres, ``fingerprint``);
``timing`` holds the time grids of feature and video frames; ``logmel`` and ``wav2vec2`` are the two
encoders; ``load`` builds the encoder a configuration names and checks it is the one a V-AID
checkpoint was trained with.
"""
