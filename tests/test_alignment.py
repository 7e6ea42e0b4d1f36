import cv2
import numpy as np
import pytest
from PIL import Image

from tests.conftest import requires_shared_data
from utils.core.run_io import SHARED_DATA_DIR
from utils.preprocess.face_alignment import (
    DEFAULT_CROP_SIZE,
    LEGACY_GEOMETRY,
    AlignSettings,
    align_face,
    alignment_matrix,
    box_crop_matrix,
    estimate_similarity,
    seed_affine_template,
    seed_part_settings,
    template_landmarks,
    transform_points,
    warp_crop,
)


def _similarity(angle_deg, scale, tx, ty):
    a = np.deg2rad(angle_deg)
    rot = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return np.hstack([rot, [[tx], [ty]]])


def test_similarity_estimate_recovers_a_known_transform():
    truth = _similarity(23.0, 1.7, 12.5, -4.0)
    src = np.array([[10, 20], [50, 22], [30, 40], [15, 60], [48, 61]], dtype=float)
    dst = transform_points(truth, src)
    np.testing.assert_allclose(estimate_similarity(src, dst), truth, atol=1e-9)


def test_similarity_never_reflects():
    src = template_landmarks(112)
    mirrored = src * [-1, 1]
    m = estimate_similarity(src, mirrored)
    assert np.linalg.det(m[:, :2]) > 0


def test_landmarks_land_on_the_template_in_the_crop():
    # Draw five dots on a rotated, scaled "face", align, and find the dots again.
    settings = AlignSettings("similarity", 112)
    truth = _similarity(-15.0, 2.3, 140.0, 60.0)
    landmarks = transform_points(truth, template_landmarks(112))
    image = np.zeros((420, 420, 3), np.uint8)
    for x, y in landmarks:
        image[int(round(y)) - 3:int(round(y)) + 4, int(round(x)) - 3:int(round(x)) + 4] = 255
    crop = align_face(image, (0, 0, 420, 420), landmarks, settings)
    for tx, ty in template_landmarks(112):
        patch = crop[int(ty) - 6:int(ty) + 7, int(tx) - 6:int(tx) + 7, 0].astype(float)
        yy, xx = np.mgrid[int(ty) - 6:int(ty) + 7, int(tx) - 6:int(tx) + 7]
        cx, cy = (patch * xx).sum() / patch.sum(), (patch * yy).sum() / patch.sum()
        assert abs(cx - tx) < 1.0 and abs(cy - ty) < 1.0


def test_legacy_affine_matches_eye_centres_and_nose_onto_the_arcface_template():
    settings = AlignSettings.from_dict({"mode": "affine", "image_size": 96, "margin": 0.5})  # before seed geometry
    landmarks = np.array([[30, 40], [70, 38], [52, 60], [35, 80], [68, 79]], dtype=float)
    m = alignment_matrix(settings, (0, 0, 100, 100), landmarks)
    np.testing.assert_allclose(transform_points(m, landmarks[:3]), template_landmarks(96)[:3], atol=1e-4)


def test_seed_affine_template_is_openface_minmax_scaled():
    # 110 * MINMAX_TEMPLATE[[36, 45, 33]] * 0.78 + 110 * 0.22 / 2, MINMAX_TEMPLATE from
    # cmusatyalab/openface openface/align_dlib.py (numbers computed there, in float32).
    np.testing.assert_allclose(seed_affine_template(110, 0.78),
                               [[28.75867, 26.623102], [79.78411, 25.671085], [54.566788, 56.239067]], atol=1e-4)
    settings = AlignSettings("affine", DEFAULT_CROP_SIZE["affine"])
    assert (settings.crop_size, settings.scale, settings.needs_seed_points) == (110, 0.78, True)


def lfw_image(name="Aaron_Eckhart/Aaron_Eckhart_0001.jpg"):
    from utils.core.image_io import load_rgb

    return load_rgb(SHARED_DATA_DIR / "lfw" / name)


@requires_shared_data
@pytest.mark.parametrize("box, region", [
    # 40x60 box: r = int(60 / 2) = 30, m = 0.5 * 30 = 15, grown by 7.5 a side, truncated.
    ((100.7, 50.2, 140.7, 110.2), (93, 42, 148, 117)),
    # 61x62.6 box over the left and bottom edges: r = 31, m = 15.5, clipped to 250 x 250.
    ((-10.4, 200.3, 50.6, 262.9), (0, 192, 58, 250)),
])
def test_seed_margin_crop_is_the_stretched_integer_region(box, region):
    image = lfw_image()
    crop = align_face(image, box, None, AlignSettings("margin", 182, 0.5))
    x0, y0, x1, y1 = region
    cut = np.ascontiguousarray(image[y0:y1, x0:x1])
    # The seed's scipy imresize(interp='bilinear') was PIL's bilinear resize; cv2.resize and a
    # warp of the matrix (the geometry) agree closely when enlarging.
    np.testing.assert_array_equal(crop, np.asarray(Image.fromarray(cut).resize((182, 182), Image.BILINEAR)))
    m = alignment_matrix(AlignSettings("margin", 182, 0.5), box, None, image.shape)
    for other in (cv2.resize(cut, (182, 182), interpolation=cv2.INTER_LINEAR), warp_crop(image, m, 182)):
        diff = np.abs(crop.astype(float) - other)
        assert diff.mean() < 0.5, diff.mean()
    # The region's corners land on the crop's corners (pixel edges: -0.5 and size - 0.5).
    np.testing.assert_allclose(transform_points(m, [(x0 - 0.5, y0 - 0.5), (x1 - 0.5, y1 - 0.5)]),
                               [(-0.5, -0.5), (181.5, 181.5)], atol=1e-9)


LFW_BOX = (67.0, 62.0, 165.0, 197.0)  # MTCNN's box on AJ_Lamas_0001 (98 x 135: r = 67)


@pytest.fixture(scope="module")
def lfw_seed_points():
    from utils.preprocess.face_detection import SEED_LANDMARKS_68, FaceLandmarker

    image = lfw_image("AJ_Lamas/AJ_Lamas_0001.jpg")
    return image, FaceLandmarker().points68(image, LFW_BOX)[list(SEED_LANDMARKS_68)]


@requires_shared_data
def test_seed_affine_puts_the_three_landmarks_on_the_template(lfw_seed_points):
    image, points = lfw_seed_points
    assert points[0, 0] < points[2, 0] < points[1, 0]  # eye corner left, nose, eye corner right
    settings = AlignSettings("affine", 110, scale=0.78)
    m = alignment_matrix(settings, LFW_BOX, None, image.shape, points)
    np.testing.assert_allclose(transform_points(m, points), seed_affine_template(110, 0.78), atol=1.0)
    # ... and the crop is that warp, as the seed's cv2.warpAffine call made it.
    seed = cv2.warpAffine(image, cv2.getAffineTransform(points.astype(np.float32), seed_affine_template(110, 0.78)),
                          (110, 110))
    assert np.abs(align_face(image, LFW_BOX, None, settings, points).astype(int) - seed).max() <= 1


@requires_shared_data
def test_seed_part_crops_are_centred_on_their_landmark(lfw_seed_points):
    image, points = lfw_seed_points
    side = int(67 * 1.2)  # int(r * margin), r = int(135 / 2)
    for settings, point in zip(seed_part_settings(), points):
        assert (settings.crop_size, settings.margin) == (50, 1.2)
        m = alignment_matrix(settings, LFW_BOX, None, image.shape, points)
        np.testing.assert_allclose(transform_points(m, [point]), [[24.5, 24.5]], atol=1.0)  # the crop's centre
        np.testing.assert_allclose(50 / np.diag(m[:, :2]), [side, side])
        x0, y0 = (int(v - side / 2) for v in point)
        ref = np.asarray(Image.fromarray(np.ascontiguousarray(image[y0:y0 + side, x0:x0 + side]))
                         .resize((50, 50), Image.BILINEAR))
        np.testing.assert_array_equal(align_face(image, LFW_BOX, None, settings, points), ref)
    # A landmark near the left edge: the square is clipped there and stretched; the point
    # stays side / 2 source px from the unclipped (right) edge.
    near_edge = points.copy()
    near_edge[0] = (5.3, 120.2)
    m = alignment_matrix(AlignSettings("part", 50, 1.2, part=0), LFW_BOX, None, image.shape, near_edge)
    x_dst = transform_points(m, near_edge[:1])[0, 0]
    assert abs((49.5 - x_dst) / m[0, 0] - side / 2) <= 1.0 and m[0, 0] == 50 / int(5.3 + side / 2)


def test_margin_settings_of_the_old_square_geometry_are_kept_apart():
    old = {"mode": "margin", "image_size": 182, "margin": 0.5}  # preprocess.json before seed geometry
    legacy = AlignSettings.from_dict(old)
    # Written back as read, under the crop side's current key: still no geometry, still legacy.
    assert legacy.geometry == LEGACY_GEOMETRY
    assert legacy.to_dict() == {"mode": "margin", "crop_size": 182, "margin": 0.5}
    assert AlignSettings.from_dict(legacy.to_dict()) == legacy
    assert AlignSettings("margin", 182, 0.5).to_dict() != legacy.to_dict()
    box = (100, 50, 180, 150)
    np.testing.assert_allclose(alignment_matrix(legacy, box, None, (250, 250)), box_crop_matrix(box, 0.5, 182))


def test_legacy_square_margin_crop_centres_the_box_and_grows_it():
    m = box_crop_matrix((100, 50, 180, 150), margin=0.5, crop_size=182)
    # Box centre -> crop centre; the longer side (100 px) x 1.5 spans the crop.
    np.testing.assert_allclose(transform_points(m, [(140, 100)]), [[91, 91]])
    np.testing.assert_allclose(m[0, 0] * 150, 182)
    assert m[0, 0] == m[1, 1]  # square: no stretching


def test_settings_validate_and_round_trip():
    for s in [AlignSettings("similarity", 112, 0.0), AlignSettings("affine", 110, scale=0.7),
              *seed_part_settings(), AlignSettings("margin")]:
        assert AlignSettings.from_dict(s.to_dict()) == s
    assert AlignSettings("similarity", 112, 0.5).to_dict() == {"mode": "similarity", "crop_size": 112, "margin": 0.5}
    for bad in [dict(mode="warp"), dict(crop_size=8), dict(margin=-0.1), dict(mode="part", part=3),
                dict(mode="none", geometry="seed")]:
        with pytest.raises(ValueError):
            AlignSettings(**bad)
