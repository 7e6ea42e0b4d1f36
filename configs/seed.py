"""The seed's recipe (2017 tflearn train_classifier.py res-cp), setting by setting.

It is TrainConfig's defaults (utils/training/config.py), so nothing differs: ResNet-34
(res-cp) on 64 px inputs resized from the seed's 182 px margin crops, softmax with
tflearn's initial weights, batch 32, Momentum(0.01, 0.9) x0.1 every 10 epochs, tflearn's
L2 1e-4 * sum(w^2) / 2 (= 5e-5 here) on the residual convs only, pixels / 255, no
augmentation, sklearn's random 10 % holdout, 20 epochs (its README: "approximately 20
epochs to train"; two learning rates of 10 epochs each).
"""
