"""benchmarks/small_data_lfw.py's recipe: chosen for 60 minutes of training on the 2-core CPU.

celeba-299 + pubfig-42 (341 identities) on 112 px similarity-aligned crops: MobileFaceNet
at 64 px, CosFace, cosine schedule, flips and crop jitter, 26 epochs (see docs/benchmarks.md's
benchmark table). Only what differs from TrainConfig's defaults (the seed's recipe).
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

epochs = 26
batch_size = 64
lr = 0.05
schedule = "cosine"
decay_step = 8
warmup_epochs = 1
weight_decay = 5e-4

img_morethan = 0
val_split = 0.05
split = "stratified"
flip = True
crop_jitter = 0.1
