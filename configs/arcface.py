"""The modern margin-loss recipe: IResNet-50 + ArcFace on 112 px similarity-aligned crops.

Only what differs from TrainConfig's defaults (the seed's recipe).
"""
net_type = "iresnet50"
align = "similarity"
crop_size = 112
input_size = 112
embedding_size = 512
normalization = "centered"

loss = "arcface"
classifier_init = "glorot_uniform"

batch_size = 128
lr = 0.1
schedule = "cosine"
decay_step = 8  # unused by the cosine schedule; kept so config.json reads as it always has
warmup_epochs = 1
weight_decay = 5e-4

split = "stratified"
flip = True
