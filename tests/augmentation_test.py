"""Tests of the training augmentations (`tff_vision.augmentation`)."""

import fl_testing
import numpy as np
import tensorflow as tf
from absl.testing import absltest, parameterized

from tff_vision import augmentation, client_data


def _augment(name, image, round_seed=7, index=3):
    fn = augmentation.augmentation(name)
    out, label = fn((tf.constant(image), tf.constant(2, tf.int64)), tf.constant(round_seed), index)
    assert int(label) == 2
    return out.numpy()


class AugmentationTest(parameterized.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.images = fl_testing.retina_arrays()[0][:16]  # Real RetinaMNIST 28 px fundus photos.

    @parameterized.parameters("flip", "fundus")
    def test_same_seed_same_image_and_each_example_its_own_draw(self, name):
        image = self.images[0]
        first = _augment(name, image)
        self.assertEqual(first.dtype, np.uint8)
        self.assertEqual(first.shape, image.shape)
        np.testing.assert_array_equal(first, _augment(name, image))
        draws = {_augment(name, image, index=i).tobytes() for i in range(8)}
        self.assertGreater(len(draws), 2)

    def test_fundus_changes_are_small(self):
        for index in range(16):
            image = self.images[index]
            out = _augment("fundus", image, index=index).astype(np.float64)
            # Undo the flips by matching the best of the four; what is left is small changes.
            views = [image, image[:, ::-1], image[::-1], image[::-1, ::-1]]
            gap = min(np.abs(out - v.astype(np.float64)).mean() for v in views)
            self.assertLess(gap, 40.0)
            # Brightness +-0.1 and contrast x0.9-1.1 move the mean by at most ~0.1 of the range.
            self.assertLess(abs(out.mean() - image.mean()), 0.12 * 255)

    def test_rotation_by_zero_is_the_identity_and_a_right_angle_is_rot90(self):
        image = tf.constant(np.random.default_rng(0).random((9, 9, 3)), tf.float32)
        np.testing.assert_allclose(augmentation.rotate(image, tf.constant(0.0)), image, atol=1e-6)
        quarter = augmentation.rotate(image, tf.constant(np.pi / 2, tf.float32)).numpy()
        matches = [np.abs(quarter - np.rot90(image.numpy(), k)).max() for k in (1, 3)]
        self.assertLess(min(matches), 1e-4)

    def test_unknown_name_is_refused(self):
        with self.assertRaisesRegex(ValueError, "use one of none, flip, fundus"):
            augmentation.augmentation("mixup")
        with self.assertRaisesRegex(ValueError, "Unknown augmentation"):
            client_data.Preprocessing(augment="mixup")

    def test_pipeline_round_depends_only_on_seed_round_and_client(self):
        dataset = tf.data.Dataset.from_tensor_slices((self.images, np.zeros(16, np.int64)))
        prep = client_data.Preprocessing(batch_size=4, augment="fundus", seed=5)

        def batches(round_num, client):
            return [x.numpy() for x, _ in prep.apply(dataset, round_num, client)]

        first, again = batches(2, "0"), batches(2, "0")
        for a, b in zip(first, again):
            np.testing.assert_array_equal(a, b)
        self.assertFalse(np.array_equal(np.concatenate(first), np.concatenate(batches(3, "0"))))
        self.assertEqual(first[0].dtype, np.float32)
        self.assertLessEqual(max(b.max() for b in first), 1.0)


if __name__ == "__main__":
    absltest.main()
