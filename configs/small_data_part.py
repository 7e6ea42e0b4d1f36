"""small_data on one of the seed's face-part crops: an ensemble member that sees part of the face.

The seed's third crop set (its facepart_k, align/segment.py): a square of 1.2 x half the face box's side around
one landmark, here the nose tip (part 2; --part 0 and 1 are the eyes), so it holds the eyes' inner corners, the
nose and the upper lip at a higher resolution than the whole face has in a 64 px input. The seed cropped parts at
50 px (still preprocess_data.py --align parts' default); here they are 64 px, the network's input, so that nothing
is upscaled: make them with `python preprocess_data.py --align parts --crop-size 64` (into
data/CASIA-WebFace-part2-64-m1.2, where this recipe looks). Otherwise small_data unchanged.
"""
from configs.small_data import *  # noqa: F401,F403  (the base recipe; only the crops below differ)

align = "part"
crop_size = 64
part = 2
