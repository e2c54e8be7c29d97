"""RandAugment and AutoAugment (vistas.data.randaugment) inside the train transform."""

import numpy as np
import pytest

from vistas.data import randaugment, transforms
from vistas.errors import DataError


def _image(c=3, hw=(20, 24)):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (*hw, c), dtype=np.uint8)


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("name", list(randaugment.OPS))
def test_every_op_keeps_shape_and_dtype_and_is_deterministic(name, c):
    image = _image(c)
    for m in (0.0, 10.0, 20.0):
        aug = randaugment.RandAugment(1, m, ops=(name,))
        a = aug(image, np.random.default_rng(5))
        b = aug(image, np.random.default_rng(5))
        assert a.shape == image.shape and a.dtype == np.uint8
        np.testing.assert_array_equal(a, b)


def test_ops_change_the_image_and_magnitude_matters():
    image = _image()
    changed = [name for name in randaugment.RANDAUGMENT_OPS
               if not np.array_equal(randaugment.RandAugment(1, 10.0, ops=(name,))(
                   image, np.random.default_rng(0)), image)]
    assert set(randaugment.RANDAUGMENT_OPS) - set(changed) <= {"Identity", "AutoContrast", "Equalize"}
    weak = randaugment.RandAugment(1, 2.0, ops=("Rotate",))(image, np.random.default_rng(1))
    strong = randaugment.RandAugment(1, 20.0, ops=("Rotate",))(image, np.random.default_rng(1))
    assert np.abs(strong.astype(int) - image).mean() > np.abs(weak.astype(int) - image).mean()


def test_policies_deterministic_by_seed():
    image = _image(hw=(32, 32))
    for aug in (randaugment.RandAugment(2, 15.0), randaugment.AutoAugment()):
        runs = [[aug(image, np.random.default_rng(s)) for s in range(8)] for _ in range(2)]
        for a, b in zip(*runs, strict=True):
            np.testing.assert_array_equal(a, b)
        assert len({r.tobytes() for r in runs[0]}) > 1


def test_train_transform_applies_augmentation_deterministically():
    image = _image(hw=(28, 28))
    plain = transforms.make_train_transform(image_size=16, flip=False)
    aug = transforms.make_train_transform(image_size=16, flip=False,
                                          augment=randaugment.make(randaug_ops=2, randaug_magnitude=10))
    a = aug(image, np.random.default_rng(3))
    np.testing.assert_array_equal(a, aug(image, np.random.default_rng(3)))
    assert a.shape == (16, 16, 3) and a.dtype == np.float32
    assert not np.array_equal(a, plain(image, np.random.default_rng(3)))


def test_bad_settings_are_clear_errors():
    with pytest.raises(DataError, match="magnitude"):
        randaugment.RandAugment(2, 50.0)
    with pytest.raises(DataError, match="unknown RandAugment ops"):
        randaugment.RandAugment(2, 5.0, ops=("Blur",))
    with pytest.raises(DataError, match="not both"):
        randaugment.make(randaug_ops=2, autoaugment=True)
    with pytest.raises(DataError, match="uint8"):
        randaugment.RandAugment(1, 5.0)(np.zeros((4, 4, 3), np.float32), np.random.default_rng(0))
