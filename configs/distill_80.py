"""small_data_80 distilled from dlib's ResNet over all 16,305 photos: CosFace plus 30 x (1 - cos) to dlib's vectors.

The student (MobileFaceNet, 80 px, 128-d: dlib's size, so its embedding is matched directly) learns
the labels and dlib's embedding of every photo at once. 8 epochs: small_data_80's 15 epochs over
8,670 training photos are ~130k images seen; 8 over the 15,490 of celeba-299 + pubfig-42 +
celeba-aligned-2760 (benchmarks/small_data_lfw.py --more-data) are ~124k, the same budget.
Teacher provenance: docs/distillation.md.
"""
from configs.small_data_80 import *  # noqa: F401,F403  (the base recipe; the teacher and the epochs differ)

teacher = "dlib"
distill_weight = 30.0
epochs = 8
