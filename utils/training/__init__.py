"""The training stage (train_classifier.py), one module per concern:

    config.py       TrainConfig: every setting once (defaults = the seed's recipe), experiment files
    train.py        run_training: the stage, top to bottom
    data.py         the crops folder checked and split; the tf.data streams
    run_dir.py      the run directory: create or resume, config.json, history.csv upkeep
    callbacks.py    crash-safe checkpoints and backups, the per-epoch report, skipped crops
    keras_internals.py  every use of undocumented Keras (private members), each behind a function
    lfw_monitor.py  LFW verification during training
    schedule.py     the learning-rate schedule
    export.py       embedding.keras + SavedModel, model.json's description; loading checkpoints

Losses and heads are in models/ (models.losses.LOSSES).
"""
