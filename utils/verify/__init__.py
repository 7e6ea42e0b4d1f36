"""Stage 3 (validate_on_lfw.py, verify_faces.py, export_model.py): embeddings -> verdicts.

    pair_files.py       pairs.txt and friends
    pair_metrics.py     10-fold accuracy, VAL@FAR, ROC
    embeddings.py       loading an embedding model, embedding crops
    validation.py       the validation driver: align a pair list's images, embed, score, report
    fusion_weights.py   ensemble weights chosen on other people
    identification.py   1:N search
    photo_inference.py  two raw photos -> same person?
    runtime_models.py   exported ONNX / LiteRT files as embedding models
    lfw_data.py         the demo's LFW subset
"""
