"""Backbones and heads, registered by name (res-cp, resnet18..152, vgg16, ...).

Pure Keras 3 (keras.layers / keras.ops only), so every model runs on any Keras backend.
The registry arrives with the training stage.
"""
