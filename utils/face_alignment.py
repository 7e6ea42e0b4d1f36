"""Turning a detected face (box + 5 landmarks) into a square aligned crop.

Landmarks are always 5 points in image coordinates, in this order: eye on the image's
left, eye on the image's right, nose tip, mouth corner on the left, on the right.
Every mode reduces to one 2x3 affine matrix from the source image to the crop, so
all crops (fallbacks included) go through the same warp.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

ALIGN_MODES = ("margin", "similarity", "affine", "none")
# The seed cropped 182 px "expanded margin" boxes; ArcFace-family models use 112 px.
DEFAULT_IMAGE_SIZE = {"margin": 182, "none": 182, "similarity": 112, "affine": 112}
DEFAULT_MARGIN = 0.5

# Standard 5-point face template for 112x112 ArcFace-family crops (x, y).
ARCFACE_TEMPLATE_112 = np.array([
    [38.2946, 51.6963],
    [73.5318, 51.5014],
    [56.0252, 71.7366],
    [41.5493, 92.3655],
    [70.7299, 92.2041],
], dtype=np.float64)


@dataclass(frozen=True)
class AlignSettings:
    """How a crop is made. Recorded in preprocess.json; later stages must reuse it."""

    mode: str = "margin"
    image_size: int = DEFAULT_IMAGE_SIZE["margin"]
    margin: float = DEFAULT_MARGIN

    def __post_init__(self):
        if self.mode not in ALIGN_MODES:
            raise ValueError(f"unknown alignment mode {self.mode!r}; choose one of {', '.join(ALIGN_MODES)}")
        if not 16 <= self.image_size <= 1024:
            raise ValueError(f"image size must be between 16 and 1024 px, got {self.image_size}")
        if not 0.0 <= self.margin <= 3.0:
            raise ValueError(f"margin must be between 0 and 3 (a fraction of the box side), got {self.margin}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "AlignSettings":
        return cls(mode=d["mode"], image_size=int(d["image_size"]), margin=float(d["margin"]))


def template_landmarks(image_size: int) -> np.ndarray:
    """The 5-point template scaled to an image_size x image_size crop."""
    return ARCFACE_TEMPLATE_112 * (image_size / 112.0)


def estimate_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares rotation + uniform scale + translation mapping src points onto dst
    (closed form of Umeyama, 1991), as a 2x3 matrix. Reflections are excluded."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1] = -1.0
    rotation = u @ np.diag(d) @ vt
    src_var = (src_c ** 2).sum() / len(src)
    scale = (s * d).sum() / src_var if src_var > 0 else 1.0
    translation = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, translation[:, None]])


def box_crop_matrix(box, margin: float, image_size: int) -> np.ndarray:
    """Map a square around the box centre, side = longer box side * (1 + margin),
    onto the crop. Squaring (instead of stretching) keeps the face's aspect ratio."""
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(x1 - x0, y1 - y0, 1.0) * (1.0 + margin)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    scale = image_size / side
    return np.array([[scale, 0.0, image_size / 2.0 - scale * cx],
                     [0.0, scale, image_size / 2.0 - scale * cy]])


def alignment_matrix(settings: AlignSettings, box, landmarks: np.ndarray | None) -> np.ndarray:
    size = settings.image_size
    if settings.mode == "margin":
        return box_crop_matrix(box, settings.margin, size)
    if settings.mode == "none":
        return box_crop_matrix(box, 0.0, size)
    if landmarks is None:
        raise ValueError(f"alignment mode {settings.mode!r} needs landmarks")
    landmarks = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    template = template_landmarks(size)
    if settings.mode == "similarity":
        return estimate_similarity(landmarks, template)
    # The seed's 3-point affine: both eyes and the nose, matched exactly.
    return cv2.getAffineTransform(landmarks[:3].astype(np.float32), template[:3].astype(np.float32)).astype(np.float64)


def warp_crop(image: np.ndarray, matrix: np.ndarray, image_size: int) -> np.ndarray:
    """Apply the 2x3 matrix; area outside the source image is black."""
    scale = np.sqrt(abs(np.linalg.det(matrix[:, :2])))
    if scale < 0.5:
        # Shrinking a large face more than 2x: smooth first so the crop does not alias.
        sigma = 0.5 / scale * 0.6
        image = cv2.GaussianBlur(image, (0, 0), sigma)
    return cv2.warpAffine(image, matrix, (image_size, image_size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))


def align_face(image: np.ndarray, box, landmarks, settings: AlignSettings) -> np.ndarray:
    return warp_crop(image, alignment_matrix(settings, box, landmarks), settings.image_size)


def transform_points(matrix: np.ndarray, points) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return points @ matrix[:, :2].T + matrix[:, 2]
