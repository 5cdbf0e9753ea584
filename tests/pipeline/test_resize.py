"""The shared resizer: antialiased bicubic for photos, nearest for index maps."""
import numpy as np
import pytest

from pipeline.resize import resize_image, resize_index_map


def test_downscale_is_antialiased():
    # A 1-pixel checkerboard has mean 127.5; shrinking it 4x with an antialiasing filter must give
    # (nearly) flat grey, whereas point-sampled cubic keeps the extremes.
    yy, xx = np.mgrid[0:64, 0:64]
    board = (((yy + xx) % 2) * 255).astype(np.uint8)
    small = resize_image(np.dstack([board] * 3), 16, 16)
    assert small.shape == (16, 16, 3) and small.dtype == np.uint8
    inner = small[2:-2, 2:-2].astype(int)
    assert abs(inner.mean() - 127.5) < 2 and inner.max() - inner.min() <= 4


def test_constant_image_stays_constant_and_same_size_copies():
    img = np.full((10, 7, 3), 77, np.uint8)
    assert (resize_image(img, 5, 3) == 77).all()
    same = resize_image(img, 10, 7)
    assert np.array_equal(same, img) and same is not img


def test_rejects_float_and_bad_size():
    with pytest.raises(TypeError):
        resize_image(np.zeros((4, 4, 3), np.float32), 2, 2)
    with pytest.raises(ValueError):
        resize_image(np.zeros((4, 4, 3), np.uint8), 0, 2)


def test_index_map_nearest_keeps_values():
    lab = np.arange(12, dtype=np.int32).reshape(3, 4) * 1000  # ids far apart: any blending would show
    up = resize_index_map(lab, 6, 8)
    assert set(np.unique(up)) == set(np.unique(lab))
    assert np.array_equal(up[::2, ::2], lab)  # exact 2x: every source pixel becomes a 2x2 block
    down = resize_index_map(up, 3, 4)
    assert np.array_equal(down, lab)
