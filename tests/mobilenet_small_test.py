"""Tests for the "mobilenetv2_small" model of tff_vision.models."""

import functools

import numpy as np
import tensorflow as tf
from absl.testing import absltest, parameterized

from tff_vision import models

_NAME = "mobilenetv2_small"
_NUM_CLASSES = 5
# Keras MobileNetV2 (alpha 1.0, include_top=False) trainable parameters: the small
# layout changes strides and padding only, so it has exactly these plus the classifier.
_KERAS_MOBILENETV2_TRAINABLE_NO_TOP = 2_223_872
_HEAD = 1280 * _NUM_CLASSES + _NUM_CLASSES
# Keras MobileNetV2's residual (Add) blocks: blocks 2, 4, 5, 7-9, 11, 12, 14, 15.
_RESIDUAL_ADDS = 10


@functools.cache
def _model(input_shape, norm="batch"):
    """A seeded model that tests only inspect or run in inference (built once)."""
    return models.build_model(_NAME, input_shape, _NUM_CLASSES, norm=norm, seed=0)


@functools.cache
def _keras_template():
    return tf.keras.applications.MobileNetV2(
        weights=None, include_top=False, input_shape=(32, 32, 3), pooling="avg"
    )


def _layers_of_type(model, layer_type):
    return [layer for layer in model.layers if isinstance(layer, layer_type)]


class ShapeTest(parameterized.TestCase):
    @parameterized.parameters(
        ((28, 28, 1), "group"),
        ((28, 28, 3), "none"),
        ((32, 32, 3), "batch"),
    )
    def test_logits_and_4x4_final_feature_map(self, input_shape, norm):
        model = _model(input_shape, norm)
        images = np.random.default_rng(0).random((2, *input_shape), np.float32)
        logits = model(images, training=False)
        self.assertEqual(logits.shape, (2, _NUM_CLASSES))
        self.assertTrue(np.all(np.isfinite(logits.numpy())))
        # Output stride 8: a 28 or 32 px image ends at 4x4 (the ImageNet layout: 1x1).
        self.assertEqual(model.get_layer("out_relu").output_shape, (None, 4, 4, 1280))
        # Used at its own size: no resize to Keras's 32 px minimum.
        self.assertNotIn("resize", [layer.name for layer in model.layers])

    def test_feature_maps_per_stage_at_28px(self):
        model = _model((28, 28, 3), "none")
        expected = {
            "Conv1": 28,
            "block_2_add": 28,
            "block_3_depthwise": 14,
            "block_6_depthwise": 7,
            "block_13_depthwise": 4,
        }
        sizes = {name: model.get_layer(name).output_shape[1:3] for name in expected}
        self.assertEqual(sizes, {name: (size, size) for name, size in expected.items()})

    def test_imagenet_layout_is_unchanged(self):
        model = models.build_model("mobilenetv2", (32, 32, 3), _NUM_CLASSES, norm="none")
        self.assertEqual(model.get_layer("out_relu").output_shape, (None, 1, 1, 1280))


class KerasStructureTest(absltest.TestCase):
    def test_layers_are_keras_mobilenetv2_with_two_strides_changed(self):
        model = _model((32, 32, 3), "batch")
        keras_layers = [layer for layer in _keras_template().layers if layer.name != "block_1_pad"]
        ours = {layer.name: layer for layer in model.layers}
        renamed = {
            layer.name: models._renamed_norm(layer.name)  # pylint: disable=protected-access
            for layer in keras_layers
            if isinstance(layer, tf.keras.layers.BatchNormalization)
        }
        # Input and pooling layers aside (Keras numbers their default names per process).
        keras_layers = keras_layers[1:-1]
        self.assertEqual(
            [layer.name for layer in model.layers][1:-2],
            [renamed.get(layer.name, layer.name) for layer in keras_layers],
        )
        changed = []
        for theirs in keras_layers:
            mine = ours[renamed.get(theirs.name, theirs.name)]
            self.assertIs(type(mine), type(theirs), theirs.name)
            if getattr(mine, "strides", None) != getattr(theirs, "strides", None):
                changed.append(theirs.name)
        self.assertEqual(changed, ["Conv1", "block_1_depthwise"])
        self.assertEqual(ours["block_1_depthwise"].padding, "same")
        self.assertLen(
            [name for name in ours if name.startswith("block_") and name.endswith("_add")],
            _RESIDUAL_ADDS,
        )

    def test_residual_blocks_start_as_identity(self):
        model = _model((32, 32, 3), "batch")
        zero, one = [], []
        for name in models.normalization_layer_names(model):
            gamma = model.get_layer(name).gamma.numpy()
            self.assertTrue(np.all(gamma == gamma[0]), name)
            (zero if gamma[0] == 0 else one).append(name)
        # The projection norm before each residual Add starts at scale 0.
        self.assertLen(zero, _RESIDUAL_ADDS)
        self.assertTrue(all(name.endswith("_project_norm") for name in zero), zero)
        self.assertIn("block_2_project_norm", zero)
        self.assertIn("block_3_project_norm", one)  # strided: no residual
        images = np.random.default_rng(0).random((2, 32, 32, 3), np.float32)
        block_input = tf.keras.Model(model.input, model.get_layer("block_1_project_norm").output)
        block_output = tf.keras.Model(model.input, model.get_layer("block_2_add").output)
        np.testing.assert_array_equal(block_input(images), block_output(images))

    def test_param_count_is_keras_mobilenetv2(self):
        expected = _KERAS_MOBILENETV2_TRAINABLE_NO_TOP + _HEAD
        trainable, _ = models.count_params(_model((32, 32, 3), "batch"))
        self.assertEqual(trainable, expected)
        self.assertEqual(
            models.count_params(_model((28, 28, 1), "group"))[0], expected - 32 * 9 * 2
        )


class NormTest(absltest.TestCase):
    def test_group_norm_with_standardized_convs(self):
        model = _model((28, 28, 1), "group")
        self.assertEmpty(_layers_of_type(model, tf.keras.layers.BatchNormalization))
        group = _layers_of_type(model, tf.keras.layers.GroupNormalization)
        self.assertLen(group, 52)
        self.assertTrue(
            all(layer.groups == models.num_groups(layer.input_shape[-1]) for layer in group)
        )
        self.assertIsInstance(model.get_layer("Conv1"), models.StandardizedConv2D)
        self.assertNotIsInstance(model.get_layer("block_1_depthwise"), models.StandardizedConv2D)

    def test_batch_norm_names_contain_norm(self):
        names = models.normalization_layer_names(_model((32, 32, 3), "batch"))
        self.assertLen(names, 52)
        self.assertIn("Conv1_norm", names)
        self.assertTrue(all("norm" in name for name in names), names)

    def test_none_has_no_norm_and_biased_convs(self):
        model = _model((28, 28, 3), "none")
        self.assertEmpty(models.normalization_layer_names(model))
        self.assertTrue(model.get_layer("Conv1").use_bias)
        self.assertTrue(model.get_layer("block_1_depthwise").use_bias)


class ValidationTest(absltest.TestCase):
    def test_name_is_listed_and_unknown_names_still_fail(self):
        self.assertIn(_NAME, models.MODEL_NAMES)
        with self.assertRaisesRegex(models.ModelError, f"Unknown model 'vgg16'.*{_NAME}"):
            models.build_model("vgg16", (28, 28, 1), 2)

    def test_stem_only_auto(self):
        with self.assertRaisesRegex(models.ModelError, "only applies to resnet18"):
            models.build_model(_NAME, (28, 28, 1), 2, stem="cifar")


if __name__ == "__main__":
    absltest.main()
