"""Classical face descriptors, the no-deep-learning reference for the LFW benchmark.

Both work on the same aligned crops the network sees, shrunk to a small grey image:
* LBP: uniform local binary pattern histograms (radius 1, 8 neighbours) over a grid of
  cells (Ahonen et al. 2006), square-rooted (Hellinger) so cosine similarity compares them;
* PCA: raw pixels projected on the whitened principal components of the training crops
  (eigenfaces), compared by cosine similarity.
"""
from __future__ import annotations

import cv2
import numpy as np

GREY_SIZE = 64
LBP_GRID = 8
PCA_COMPONENTS = 128


def grey_crops(paths, size: int = GREY_SIZE) -> np.ndarray:
    """[N, size, size] float32 grey images of crop files (area-averaged down)."""
    out = np.empty((len(paths), size, size), np.float32)
    for i, path in enumerate(paths):
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise ValueError(f"cannot decode crop {path}")
        out[i] = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return out


def _uniform_lookup() -> np.ndarray:
    """8-bit LBP code -> bin: the 58 codes with at most two 0/1 transitions (around the circle)
    get a bin each, every other code shares bin 58."""
    lookup = np.full(256, 58, np.int64)
    next_bin = 0
    for code in range(256):
        bits = [(code >> k) & 1 for k in range(8)]
        if sum(bits[k] != bits[(k + 1) % 8] for k in range(8)) <= 2:
            lookup[code] = next_bin
            next_bin += 1
    return lookup


UNIFORM_BINS = 59
_LOOKUP = _uniform_lookup()
# Neighbours in circular order, so bit k and bit k+1 are adjacent pixels.
_NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1))


def lbp_features(grey: np.ndarray, grid: int = LBP_GRID) -> np.ndarray:
    """[N, H, W] grey images -> [N, grid*grid*59] square-rooted, per-cell normalised histograms."""
    n, h, w = grey.shape
    centre = grey[:, 1:-1, 1:-1]
    codes = np.zeros(centre.shape, np.int64)
    for bit, (dy, dx) in enumerate(_NEIGHBOURS):
        codes |= (grey[:, 1 + dy:h - 1 + dy, 1 + dx:w - 1 + dx] >= centre).astype(np.int64) << bit
    bins = _LOOKUP[codes]
    ch, cw = bins.shape[1] // grid, bins.shape[2] // grid
    features = np.empty((n, grid, grid, UNIFORM_BINS), np.float32)
    for gy in range(grid):
        for gx in range(grid):
            cell = bins[:, gy * ch:(gy + 1) * ch, gx * cw:(gx + 1) * cw].reshape(n, -1)
            counts = np.stack([np.bincount(row, minlength=UNIFORM_BINS) for row in cell])
            features[:, gy, gx] = counts / cell.shape[1]
    return np.sqrt(features.reshape(n, -1))


class PixelPCA:
    """Eigenfaces: whitened PCA of mean-removed, contrast-normalised grey pixels."""

    def __init__(self, components: int = PCA_COMPONENTS):
        self.components = components

    @staticmethod
    def _normalise(grey: np.ndarray) -> np.ndarray:
        x = grey.reshape(len(grey), -1).astype(np.float64)
        x -= x.mean(axis=1, keepdims=True)
        return x / np.maximum(x.std(axis=1, keepdims=True), 1e-6)

    def fit(self, grey: np.ndarray) -> "PixelPCA":
        x = self._normalise(grey)
        self.mean_ = x.mean(axis=0)
        _, singular, vt = np.linalg.svd(x - self.mean_, full_matrices=False)
        k = min(self.components, len(singular))
        self.basis_ = vt[:k]
        self.scale_ = singular[:k] / np.sqrt(max(len(x) - 1, 1))
        return self

    def transform(self, grey: np.ndarray) -> np.ndarray:
        return (self._normalise(grey) - self.mean_) @ self.basis_.T / np.maximum(self.scale_, 1e-6)
