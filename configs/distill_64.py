"""distill_80 at a 64 px input: the cheaper student the 50x-the-teacher speed target needs.

The same teacher, weight, crops and photos as distill_80. A 64 px MobileFaceNet epoch costs
~1/1.7 of an 80 px one on the 2-core CPU, so the same minutes buy 14 epochs (~216k images seen,
as small_data's 26 epochs over 8,670 photos). Teacher provenance: docs/distillation.md.
"""
from configs.distill_80 import *  # noqa: F401,F403  (the same recipe; the input and the epochs differ)

input_size = 64
epochs = 14
