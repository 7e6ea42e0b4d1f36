"""The choices validate_on_lfw.py offers, as plain data: its parser (and --help) lists them
without numpy, scikit-learn or TensorFlow. The modules that use them import them from here."""

FUSIONS = ("concat", "mean-score")  # utils.verify.fusion.fused_scores' ways to combine an ensemble
METRICS = ("cosine", "euclidean")  # utils.verify.pair_metrics.score_pairs' pair scores
