#!/usr/bin/env python3
"""How much of a ReLU embedding is alive: dead units, sparsity and effective dimension on LFW.

    python benchmarks/embedding_health.py --model runs/res-cp-seed --lfw-dir ../shared/data/lfw

The seed's embedding is a 160-unit ReLU layer. A unit that is zero for every face carries
nothing; if many die (a known failure of ReLU layers trained with a large step), verification
works in fewer dimensions than it seems. Prints, over the aligned crops of every image in the
pairs file (aligned the model's way, cached like validate_on_lfw.py): units that are zero on
every image, the share of zero activations, active units per image, all-zero embeddings, and
the participation ratio (sum of PCA variances squared / sum of their squares: the effective
number of dimensions the embeddings spread over).

With --by-layer (models whose embedding is a Dense layer on a "global_pool", e.g. res-cp) it
also scores the LFW pairs (10 folds, cosine, no flip) on the pooled features, on the
embedding layer before its ReLU and after it: whether the ReLU layer loses what the trunk has.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def health(embeddings: np.ndarray) -> dict:
    """Figures of a [N, D] batch of (raw or L2-normalised) ReLU embeddings: zeros survive normalising."""
    active = embeddings > 0
    centred = embeddings - embeddings.mean(0)
    variances = np.linalg.eigvalsh(centred.T @ centred / max(len(embeddings) - 1, 1)).clip(min=0)
    return {
        "images": int(len(embeddings)), "units": int(embeddings.shape[1]),
        "dead_units": int((~active.any(0)).sum()),
        "zero_fraction": round(float(1 - active.mean()), 4),
        "active_units_per_image_median": int(np.median(active.sum(1))),
        "all_zero_embeddings": int((~active.any(1)).sum()),
        "participation_ratio": round(float(variances.sum() ** 2 / max((variances ** 2).sum(), 1e-30)), 2),
    }


def layer_features(model, crops: list[str], input_size: int) -> dict[str, np.ndarray]:
    """Pooled trunk features, the embedding layer's pre-activation, and the embedding itself."""
    import keras

    from utils.preprocess.input_pipeline import make_dataset

    pool = keras.Model(model.input, model.get_layer("global_pool").output)
    kernel, bias = model.get_layer("embedding").get_weights()
    ds = make_dataset(crops, np.zeros(len(crops), np.int32), input_size, 128, training=False)
    pooled = np.concatenate([np.asarray(pool(images, training=False)) for images, _ in ds]).astype(np.float64)
    before = pooled @ kernel + bias
    return {"global_pool": pooled, "embedding before ReLU": before, "embedding (after ReLU)": np.maximum(before, 0)}


def main() -> int:
    from utils.verify.aligned_cache import aligned_pair_crops
    from utils.verify.embeddings import embed_files, load_embedding_model

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="finished run directory (has model.json)")
    p.add_argument("--lfw-dir", type=Path, default=Path("lfw"), help="raw LFW images")
    p.add_argument("--pairs", type=Path, default=None, help="pairs file (default <lfw-dir>/pairs.txt)")
    p.add_argument("--cache-dir", type=Path, default=Path("data"), help="where the aligned LFW copy is cached")
    p.add_argument("--by-layer", action="store_true", help="also verify LFW on the pooled features and the "
                   "pre-ReLU embedding (Dense embedding on a global_pool only)")
    args = p.parse_args()
    model, info = load_embedding_model(args.model)
    pairs, crops = aligned_pair_crops(args.lfw_dir, args.pairs or args.lfw_dir / "pairs.txt", info,
                                      progress=False, cache_root=args.cache_dir)
    figures = health(embed_files(model, crops, info["input_size"], flip=False, progress=False))
    print(f"{args.model}: {info['net_type']}, {figures['units']}-d embedding, {figures['images']} LFW crops")
    for key, value in figures.items():
        print(f"  {key:32s} {value}")
    if args.by_layer:
        from utils.verify.pair_files import pair_rows
        from utils.verify.pair_metrics import evaluate_pairs, score_pairs

        rows_a, rows_b = pair_rows(pairs)
        print("LFW accuracy by layer (cosine, no flip):")
        for name, f in layer_features(model, crops, info["input_size"]).items():
            m = evaluate_pairs(score_pairs(f[rows_a], f[rows_b], "cosine"), pairs.same, pairs.fold)
            print(f"  {name:32s} {f.shape[1]:>4}-d  {100 * m['accuracy_mean']:.2f} ± {100 * m['accuracy_std']:.2f} %"
                  f"  AUC {m['auc']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
