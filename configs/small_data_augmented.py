"""small_data plus the augmentation its memorisation gap calls for.

The same network, loss, schedule and 26 epochs; on top of flips and crop jitter: shrink-and-enlarge
(LFW's softer, lower-resolution photos), greyscale copies, colour jitter and random erasing. The
docs/benchmarks.md's levers table has its LFW figure beside small_data's.
"""
from configs.small_data import *  # noqa: F401,F403  (the base recipe; only the levers below differ)

downscale = 0.3
greyscale = 0.1
brightness = 20.0
contrast = 0.2
saturation = 0.3
erasing = 0.25
