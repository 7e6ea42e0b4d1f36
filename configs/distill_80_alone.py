"""distill_80 without the labels: dlib's ResNet's embedding is the student's only target.

No classifier and no margin: each of the 16,305 photos counts only through 1 - cos(student, dlib)
(docs/distillation.md). The same student, crops, teacher and budget as distill_80.
"""
from configs.distill_80 import *  # noqa: F401,F403  (the same recipe; only the loss differs)

loss = "distill"
