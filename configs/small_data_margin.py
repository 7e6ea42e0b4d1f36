"""small_data on the seed's margin crops: an ensemble member that sees the face framed another way.

The same network, loss, schedule, augmentation and 26 epochs as small_data; only the crops differ:
the seed's 182 px margin crops (detection box grown by --margin, stretched, no rotation) instead of 112 px similarity
crops, so the 64 px input holds more hair, ears and background and a smaller, unrotated face.
"""
from configs.small_data import *  # noqa: F401,F403  (the base recipe; only the crops below differ)

align = "margin"
crop_size = 182
