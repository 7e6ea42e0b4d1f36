"""Library behind the command-line stages, one subpackage per stage. Imports point one way
only (checked by `lint-imports`, see .importlinter):

    core/        run I/O, folder locks, stop requests, start-up, image I/O, packs, the error base
    preprocess/  photos -> crops: detection, alignment, settings, manifest, shards, the driver
    verify/      crops -> verification: pairs, metrics, embedding, validation, fusion, 1:N, exports
    training/    crops -> run directory: config, data, callbacks, the training loop, export

core <- preprocess <- verify <- training <- the CLIs (models/ sits between preprocess and verify).
"""
