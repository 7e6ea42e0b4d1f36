"""demo.py's recipe: small and quick on a 2-core CPU.

MobileFaceNet on 64 px inputs from 112 px similarity-aligned crops, CosFace, cosine
schedule, 10 epochs. Only what differs from TrainConfig's defaults (the seed's recipe).
"""
net_type = "mobilefacenet"
align = "similarity"
crop_size = 112
input_size = 64
embedding_size = 128
normalization = "centered"

loss = "cosface"
classifier_init = "glorot_uniform"
margin_scale = 32.0
margin_m = 0.2

epochs = 10
batch_size = 64
lr = 0.05
schedule = "cosine"
decay_step = 8
warmup_epochs = 1
weight_decay = 5e-4

img_morethan = 0  # the demo picks its people itself (--min-faces-per-person)
val_split = 0.05
split = "stratified"
flip = True
