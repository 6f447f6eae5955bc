"""Views: the loader's affine draws (draw_views) and the device-side warp (render, render_eval)."""

from __future__ import annotations

import math
import numpy as np
import pytest
import torch

from ark_dist.data.config import ViewConfig
from ark_dist.data.views import draw_views, eval_thetas, render, render_eval

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
IDENTITY = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]


def cfg(**kw) -> ViewConfig:
    c = ViewConfig(**kw)
    c.validate()
    return c


def thetas(*mats) -> torch.Tensor:
    return torch.tensor(mats, dtype=torch.float32)


def constant(values, side=16) -> torch.Tensor:
    """(B, 1, side, side) uint8, image b filled with values[b]."""
    return torch.tensor(values, dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, side, side).contiguous()


def normalised(unit: float) -> np.ndarray:
    """A gray level in [0, 1] -> its three ImageNet-normalised channel values."""
    return (unit - MEAN) / STD


def corners_in_input(theta: np.ndarray) -> np.ndarray:
    """The output square's corners mapped into input coordinates: (4, 2)."""
    corners = np.array([[-1, -1, 1], [1, -1, 1], [-1, 1, 1], [1, 1, 1]], dtype=np.float64)
    return corners @ theta.astype(np.float64).T


# ---------------------------------------------------------------- draw_views


def test_draw_views_shapes_and_dtypes():
    out = draw_views(np.random.default_rng(0), 256, 256, cfg())
    assert set(out) == {"theta_student", "theta_teacher", "photo"}
    assert out["theta_student"].shape == (2, 3) and out["theta_student"].dtype == np.float32
    assert out["theta_teacher"].shape == (2, 3) and out["theta_teacher"].dtype == np.float32
    assert out["photo"].shape == (3,) and out["photo"].dtype == np.float32


def test_same_geometry_teacher_equals_student():
    rng = np.random.default_rng(1)
    c = cfg(teacher="same_geometry", shift_scale_rotate_p=1.0)
    for _ in range(50):
        out = draw_views(rng, 300, 240, c)
        np.testing.assert_array_equal(out["theta_teacher"], out["theta_student"])
        # a copy: changing one must not change the other
        out["theta_teacher"][0, 0] += 1
        assert out["theta_teacher"][0, 0] != out["theta_student"][0, 0]


def test_whole_image_teacher_is_identity():
    rng = np.random.default_rng(2)
    c = cfg(teacher="whole_image", shift_scale_rotate_p=1.0)
    students = []
    for _ in range(50):
        out = draw_views(rng, 256, 256, c)
        np.testing.assert_array_equal(out["theta_teacher"], np.array(IDENTITY, dtype=np.float32))
        students.append(out["theta_student"])
    assert not all(np.array_equal(s, np.array(IDENTITY, dtype=np.float32)) for s in students)


@pytest.mark.parametrize("width, height, scale", [
    (256, 256, (0.08, 1.0)),
    (320, 256, (0.08, 1.0)),
    (256, 320, (0.2, 0.5)),
    (512, 512, (0.5, 0.6)),
])
def test_crop_stays_inside_and_area_share_in_range(width, height, scale):
    c = cfg(shift_scale_rotate_p=0.0, crop_scale=scale)
    rng = np.random.default_rng(3)
    shares = []
    for _ in range(300):
        theta = draw_views(rng, width, height, c)["theta_student"]
        assert theta[0, 1] == 0 and theta[1, 0] == 0  # a crop: no rotation or shear
        assert theta[0, 0] > 0 and theta[1, 1] > 0  # and no mirror
        pts = corners_in_input(theta)
        assert np.all(pts >= -1 - 1e-6) and np.all(pts <= 1 + 1e-6), pts
        share = abs(np.linalg.det(theta[:, :2].astype(np.float64)))
        # w and h are rounded to whole pixels: at worst (1 +- 0.5/62)^2 here
        assert scale[0] * 0.97 <= share <= min(1.0, scale[1] * 1.03) + 1e-6, share
        # pixel aspect w / h within crop_ratio, up to rounding
        aspect = theta[0, 0] * width / (theta[1, 1] * height)
        assert 0.75 * 0.97 <= aspect <= 4 / 3 * 1.03, aspect
        shares.append(share)
    # the draws actually use the range
    assert min(shares) < scale[0] + 0.25 * (scale[1] - scale[0])
    assert max(shares) > scale[1] - 0.25 * (scale[1] - scale[0])


def test_crop_positions_cover_the_image():
    # small crops land both left and right, top and bottom of centre
    c = cfg(shift_scale_rotate_p=0.0, crop_scale=(0.1, 0.2))
    rng = np.random.default_rng(4)
    centres = np.array([draw_views(rng, 256, 256, c)["theta_student"][:, 2] for _ in range(200)])
    assert centres[:, 0].min() < -0.3 and centres[:, 0].max() > 0.3
    assert centres[:, 1].min() < -0.3 and centres[:, 1].max() > 0.3


def test_full_crop_without_shift_scale_rotate_is_identity():
    c = cfg(shift_scale_rotate_p=0.0, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    out = draw_views(np.random.default_rng(5), 256, 256, c)
    np.testing.assert_allclose(out["theta_student"], np.array(IDENTITY), atol=1e-7)


def test_shift_scale_rotate_is_a_bounded_similarity():
    # With the crop pinned to the whole square image, the warp is ShiftScaleRotate's inverse alone.
    c = cfg(shift_scale_rotate_p=1.0, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0),
            shift=0.0625, scale=0.1, rotate_deg=10.0)
    rng = np.random.default_rng(6)
    angles = []
    for _ in range(200):
        t = draw_views(rng, 256, 256, c)["theta_student"].astype(np.float64)
        a = t[:, :2]
        assert a[0, 0] == pytest.approx(a[1, 1], abs=1e-6) and a[0, 1] == pytest.approx(-a[1, 0], abs=1e-6)
        zoom = math.hypot(a[0, 0], a[0, 1])  # 1 / scale
        assert 1 / 1.1 - 1e-6 <= zoom <= 1 / 0.9 + 1e-6
        angle = math.degrees(math.atan2(abs(a[0, 1]), a[0, 0]))
        assert angle <= 10.0 + 1e-4
        angles.append(angle)
        # translation = -(sR)^-1 shift, |shift| per axis <= 2 * 0.0625 in [-1, 1] units
        assert np.linalg.norm(t[:, 2]) <= math.sqrt(2) * 0.125 * zoom + 1e-6
    assert max(angles) > 5.0  # rotations actually happen


def test_shift_scale_rotate_probability():
    c = cfg(shift_scale_rotate_p=0.5, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    rng = np.random.default_rng(7)
    applied = [not np.allclose(draw_views(rng, 256, 256, c)["theta_student"], IDENTITY, atol=1e-7)
               for _ in range(1000)]
    assert abs(np.mean(applied) - 0.5) < 0.06


def test_photometric_off():
    rng = np.random.default_rng(8)
    for _ in range(100):
        assert draw_views(rng, 256, 256, cfg(photometric_p=0.0))["photo"][0] == 0


def test_photometric_on_parameters_in_range():
    c = cfg(photometric_p=1.0, brightness=0.2, contrast=0.3, gamma=(0.8, 1.2))
    rng = np.random.default_rng(9)
    kinds = []
    for _ in range(400):
        kind, a, b = draw_views(rng, 256, 256, c)["photo"].tolist()
        assert kind in (1.0, 2.0)
        if kind == 1.0:  # brightness/contrast: alpha = 1 +- contrast, beta = +- brightness
            assert 0.7 - 1e-6 <= a <= 1.3 + 1e-6 and -0.2 - 1e-6 <= b <= 0.2 + 1e-6
        else:  # gamma
            assert 0.8 - 1e-6 <= a <= 1.2 + 1e-6 and b == 0.0
        kinds.append(kind)
    assert 0.4 < np.mean(np.array(kinds) == 1.0) < 0.6  # both kinds drawn


def test_photometric_probability():
    rng = np.random.default_rng(10)
    kinds = [draw_views(rng, 256, 256, cfg(photometric_p=0.3))["photo"][0] for _ in range(1000)]
    assert abs(np.mean(np.array(kinds) != 0) - 0.3) < 0.05


def test_same_seed_same_draws():
    c = cfg(shift_scale_rotate_p=0.5, photometric_p=0.5)
    a, b = np.random.default_rng(11), np.random.default_rng(11)
    other = np.random.default_rng(12)
    draws_a = [draw_views(a, 300, 200, c) for _ in range(20)]
    draws_b = [draw_views(b, 300, 200, c) for _ in range(20)]
    draws_o = [draw_views(other, 300, 200, c) for _ in range(20)]
    for x, y in zip(draws_a, draws_b):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    assert any(not np.array_equal(x["theta_student"], o["theta_student"]) for x, o in zip(draws_a, draws_o))


# ---------------------------------------------------------------- render


@pytest.mark.parametrize("v", [0, 37, 128, 255])
def test_render_constant_image_normalisation(v):
    out = render(constant([v, v]), theta=thetas(IDENTITY, IDENTITY), size=8)
    assert out.shape == (2, 3, 8, 8) and out.dtype == torch.float32
    expected = normalised(v / 255)
    for ch in range(3):
        np.testing.assert_allclose(out[:, ch].numpy(), expected[ch], atol=1e-4)


def test_render_identity_reproduces_the_image():
    torch.manual_seed(0)
    img = torch.randint(0, 256, (2, 1, 24, 24), dtype=torch.uint8)
    out = render(img, theta=thetas(IDENTITY, IDENTITY), size=24)
    unit = img.double() / 255  # (2, 1, 24, 24)
    for ch in range(3):
        expected = (unit[:, 0] - MEAN[ch]) / STD[ch]
        np.testing.assert_allclose(out[:, ch].double().numpy(), expected.numpy(), atol=1e-4)


def test_render_output_size():
    out = render(constant([10, 20, 30], side=32), theta=thetas(IDENTITY, IDENTITY, IDENTITY), size=12)
    assert out.shape == (3, 3, 12, 12)


def test_render_mirror_of_horizontal_gradient():
    ramp = (torch.arange(32) * 8).to(torch.uint8)  # 0 .. 248 left to right
    img = ramp.view(1, 1, 1, 32).expand(1, 1, 32, 32).contiguous()
    ident = render(img, theta=thetas(IDENTITY), size=32)
    mirror = render(img, theta=thetas([[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), size=32)
    assert not torch.allclose(ident, mirror, atol=1e-3)  # a gradient is not its own mirror
    torch.testing.assert_close(mirror, torch.flip(ident, dims=[-1]), atol=1e-5, rtol=0)
    # the left-most output pixel now shows the right-most input pixel
    assert mirror[0, 0, 0, 0].item() == pytest.approx(normalised(248 / 255)[0], abs=1e-4)


def test_render_crop_convention_top_left_quadrant():
    # theta maps output to input: [[0.5, 0, -0.5], [0, 0.5, -0.5]] samples x, y in [-1, 0]: the top-left quadrant.
    img = torch.full((1, 1, 32, 32), 50, dtype=torch.uint8)
    img[:, :, :16, :16] = 200
    out = render(img, theta=thetas([[0.5, 0.0, -0.5], [0.0, 0.5, -0.5]]), size=16)
    expected = normalised(200 / 255)
    for ch in range(3):
        np.testing.assert_allclose(out[0, ch].numpy(), expected[ch], atol=1e-4)
    # and the bottom-right quadrant shows the background
    out = render(img, theta=thetas([[0.5, 0.0, 0.5], [0.0, 0.5, 0.5]]), size=16)
    np.testing.assert_allclose(out[0, 0].numpy(), normalised(50 / 255)[0], atol=1e-4)


@pytest.mark.parametrize("v, a, b", [
    (100, 1.2, 0.1),   # inside [0, 1]
    (240, 1.2, 0.2),   # clamps at 1
    (10, 0.8, -0.2),   # clamps at 0
    (128, 0.9, 0.0),
])
def test_render_brightness_contrast(v, a, b):
    photo = torch.tensor([[1.0, a, b]])
    out = render(constant([v]), theta=thetas(IDENTITY), size=8, photo=photo)
    unit = min(1.0, max(0.0, v / 255 * a + b))
    expected = normalised(unit)
    for ch in range(3):
        np.testing.assert_allclose(out[0, ch].numpy(), expected[ch], atol=1e-4)


@pytest.mark.parametrize("v, g", [(100, 0.8), (100, 1.2), (200, 1.5), (255, 0.9)])
def test_render_gamma(v, g):
    photo = torch.tensor([[2.0, g, 0.0]])
    out = render(constant([v]), theta=thetas(IDENTITY), size=8, photo=photo)
    expected = normalised((v / 255) ** g)
    for ch in range(3):
        np.testing.assert_allclose(out[0, ch].numpy(), expected[ch], atol=1e-4)


def test_render_photo_per_sample_and_none_kind():
    # one batch, three different photometric changes; kind 0 ignores its parameters
    photo = torch.tensor([[0.0, 1.7, 0.4], [1.0, 0.5, 0.1], [2.0, 2.0, 0.0]])
    out = render(constant([120, 120, 120]), theta=thetas(IDENTITY, IDENTITY, IDENTITY), size=8, photo=photo)
    u = 120 / 255
    for b, unit in enumerate([u, u * 0.5 + 0.1, u ** 2]):
        np.testing.assert_allclose(out[b, 1].numpy(), normalised(unit)[1], atol=1e-4)


def test_render_draw_views_output_directly():
    # what the loader hands over (numpy float32) goes straight into render
    c = cfg(photometric_p=1.0)
    rng = np.random.default_rng(13)
    views = [draw_views(rng, 32, 32, c) for _ in range(4)]
    theta = torch.from_numpy(np.stack([v["theta_student"] for v in views]))
    photo = torch.from_numpy(np.stack([v["photo"] for v in views]))
    out = render(constant([90, 90, 90, 90], side=32), theta=theta, size=16, photo=photo)
    assert out.shape == (4, 3, 16, 16) and torch.isfinite(out).all()
    for b, v in enumerate(views):  # constant input: only the photometric change shows
        kind, a, bb = v["photo"].tolist()
        unit = 90 / 255 * a + bb if kind == 1 else (90 / 255) ** a
        np.testing.assert_allclose(out[b, 0].numpy(), normalised(min(1, max(0, unit)))[0], atol=1e-4)


# ---------------------------------------------------------------- evaluation


def test_render_eval_centre_crop_shape_and_content():
    c = cfg(image_size=16, load_size=32)
    out = render_eval(constant([30, 220], side=32), c)
    assert out.shape == (2, 1, 3, 16, 16)
    # batch order kept: image b's views come from image b
    np.testing.assert_allclose(out[0, 0, 0].numpy(), normalised(30 / 255)[0], atol=1e-4)
    np.testing.assert_allclose(out[1, 0, 0].numpy(), normalised(220 / 255)[0], atol=1e-4)


def test_render_eval_ten_crop_shape_and_batch_order():
    c = cfg(image_size=16, load_size=32, ten_crop=True)
    out = render_eval(constant([30, 220, 100], side=32), c)
    assert out.shape == (3, 10, 3, 16, 16)
    for b, v in enumerate([30, 220, 100]):
        np.testing.assert_allclose(out[b, :, 2].numpy(), normalised(v / 255)[2], atol=1e-4)


def test_eval_thetas_centre():
    t = eval_thetas(cfg(eval_crop=0.875))
    assert t.shape == (1, 2, 3)
    np.testing.assert_allclose(t[0].numpy(), [[0.875, 0, 0], [0, 0.875, 0]], atol=1e-7)


def test_eval_thetas_ten_crop():
    c = 0.875
    t = eval_thetas(cfg(eval_crop=c, ten_crop=True)).numpy()
    assert t.shape == (10, 2, 3)
    assert np.all(np.abs(t[:, 1, 1] - c) < 1e-7) and np.all(t[:, 0, 1] == 0) and np.all(t[:, 1, 0] == 0)
    assert np.sum(t[:, 0, 0] < 0) == 5 and np.sum(t[:, 0, 0] > 0) == 5  # five mirrored views
    assert np.allclose(np.abs(t[:, 0, 0]), c)
    # centre + four corners, each once unmirrored and once mirrored; corners touch the image edge
    expected_centres = {(0.0, 0.0)} | {(sx * (1 - c), sy * (1 - c)) for sx in (-1, 1) for sy in (-1, 1)}
    for sign in (1, -1):
        got = {(round(float(x), 6), round(float(y), 6)) for x, y in t[np.sign(t[:, 0, 0]) == sign][:, :, 2]}
        assert got == {(round(x, 6), round(y, 6)) for x, y in expected_centres}
    for theta in t:
        pts = corners_in_input(theta)
        assert np.all(np.abs(pts) <= 1 + 1e-6)


def test_render_eval_mirrored_views_are_flips():
    torch.manual_seed(1)
    img = torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8)
    c = cfg(image_size=16, load_size=32, ten_crop=True)
    out = render_eval(img, c)
    t = eval_thetas(c)
    for k in range(10):
        if t[k, 0, 0] > 0:
            mirror = [j for j in range(10) if t[j, 0, 0] < 0 and torch.equal(t[j, :, 2], t[k, :, 2])]
            assert len(mirror) == 1
            torch.testing.assert_close(out[:, mirror[0]], torch.flip(out[:, k], dims=[-1]), atol=1e-4, rtol=0)
    # the crops differ from one another on a random image
    assert not torch.allclose(out[:, 0], out[:, 1], atol=1e-3)


def test_render_eval_centre_matches_render():
    torch.manual_seed(2)
    img = torch.randint(0, 256, (1, 1, 32, 32), dtype=torch.uint8)
    c = cfg(image_size=16, load_size=32, eval_crop=0.5)
    out = render_eval(img, c)
    # eval_crop 0.5, size 16 from 32: output pixel j samples input pixel 8 + j exactly
    unit = img[0, 0, 8:24, 8:24].double() / 255
    np.testing.assert_allclose(out[0, 0, 0].double().numpy(), ((unit - MEAN[0]) / STD[0]).numpy(), atol=1e-4)
