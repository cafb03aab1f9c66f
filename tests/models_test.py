"""Tests for tff_vision.models."""

import functools

import numpy as np
import tensorflow as tf
from absl.testing import absltest, parameterized

from tff_vision import devices, models

_SMALL_SHAPES = ((28, 28, 1), (28, 28, 3), (64, 64, 1), (64, 64, 3))
_NUM_CLASSES = 5

# Trainable parameter counts at 224x224x3. ResNet-18 matches torchvision;
# the application numbers were measured from
# tf.keras.applications.{MobileNetV2,ResNet50}(weights=None).
_RESNET18_TRAINABLE = 11_689_512
_RESNET18_TRAINABLE_NO_TOP = 11_176_512
_MOBILENETV2_TRAINABLE = 3_504_872
_MOBILENETV2_TOTAL = 3_538_984
_MOBILENETV2_TRAINABLE_NO_TOP = 2_223_872
_MOBILENETV2_TOTAL_NO_TOP = 2_257_984
_RESNET50_TRAINABLE_NO_TOP = 23_534_592
_RESNET50_TOTAL_NO_TOP = 23_587_712


def _cached_model(name, input_shape, norm="group", include_top=True):
    """Builds (once) a seeded model that tests only inspect, never train.

    Building MobileNetV2 takes seconds on CPU, so read-only tests share models.
    """
    return _build_cached(name, tuple(input_shape), norm, include_top)


@functools.cache
def _build_cached(name, input_shape, norm, include_top):
    return models.build_model(
        name,
        input_shape,
        _NUM_CLASSES,
        norm=norm,
        seed=0,
        include_top=include_top,
    )


def _layers_of_type(model, layer_type):
    return [layer for layer in model.layers if isinstance(layer, layer_type)]


def _weights_equal(model_a, model_b):
    weights_a, weights_b = model_a.get_weights(), model_b.get_weights()
    return len(weights_a) == len(weights_b) and all(
        np.array_equal(a, b) for a, b in zip(weights_a, weights_b)
    )


class OutputShapeTest(parameterized.TestCase):
    def _check_logits(self, model, input_shape):
        images = np.random.default_rng(0).random((2, *input_shape))
        logits = model(images.astype(np.float32), training=False)
        self.assertEqual(logits.shape, (2, _NUM_CLASSES))
        self.assertEqual(logits.dtype, tf.float32)
        self.assertTrue(np.all(np.isfinite(logits.numpy())))

    @parameterized.product(name=("cnn", "resnet18"), input_shape=_SMALL_SHAPES)
    def test_logits_shape(self, name, input_shape):
        self._check_logits(_cached_model(name, input_shape), input_shape)

    # MobileNetV2 builds are slow (GroupNormalization especially), so each
    # shape gets one norm, covering all three.
    @parameterized.parameters(
        ((28, 28, 1), "group"),
        ((28, 28, 3), "none"),
        ((64, 64, 1), "batch"),
        ((64, 64, 3), "group"),
    )
    def test_mobilenetv2_logits_shape(self, input_shape, norm):
        model = _cached_model("mobilenetv2", input_shape, norm=norm)
        self._check_logits(model, input_shape)

    def test_resnet50_logits_shape(self):
        # Grey 28px input: exercises the resize to 32x32 and 1-channel stem.
        model = _cached_model("resnet50", (28, 28, 1), norm="batch")
        logits = model(np.zeros((2, 28, 28, 1), np.float32))
        self.assertEqual(logits.shape, (2, _NUM_CLASSES))

    def test_application_resizes_small_inputs_only(self):
        small = _cached_model("mobilenetv2", (28, 28, 1))
        large = _cached_model("mobilenetv2", (64, 64, 1), norm="batch")
        self.assertEqual(small.get_layer("resize").output_shape[1:3], (32, 32))
        self.assertNotIn("resize", [layer.name for layer in large.layers])

    @parameterized.parameters("cnn", "resnet18", "mobilenetv2")
    def test_include_top_false_outputs_features(self, name):
        model = _cached_model(name, (28, 28, 3), norm="batch", include_top=False)
        self.assertLen(model.output_shape, 2)
        self.assertNotIn("logits", [layer.name for layer in model.layers])

    def test_model_and_input_names_are_stable(self):
        first = _cached_model("resnet18", (28, 28, 1))
        second = models.build_model("resnet18", (28, 28, 1), 2)
        self.assertEqual(first.name, "resnet18")
        self.assertEqual(first.layers[0].name, "image")
        self.assertEqual(
            [layer.name for layer in first.layers],
            [layer.name for layer in second.layers],
        )

    def test_builds_in_graph_mode(self):
        with tf.Graph().as_default():
            model = models.build_model("cnn", (28, 28, 1), 2, seed=1)
            self.assertEqual(model.output_shape, (None, 2))


class MixedPrecisionTest(parameterized.TestCase):
    def tearDown(self):
        devices.set_mixed_precision(False)
        super().tearDown()

    @parameterized.parameters("resnet18", "cnn", "mobilenetv2")
    def test_bfloat16_compute_float32_weights_and_logits(self, name):
        self.assertEqual(devices.set_mixed_precision(True), "mixed_bfloat16")
        model = models.build_model(name, (32, 32, 3), 4, seed=0)
        self.assertEqual(model.output.dtype, tf.float32)
        self.assertTrue(all(v.dtype == tf.float32 for v in model.weights))
        convs = [layer for layer in model.layers if isinstance(layer, tf.keras.layers.Conv2D)]
        self.assertEqual(convs[0].compute_dtype, "bfloat16")
        logits = model(np.random.default_rng(0).random((2, 32, 32, 3), np.float32))
        self.assertEqual(logits.dtype, tf.float32)
        self.assertEqual(devices.set_mixed_precision(False), "float32")
        self.assertEqual(
            models.build_model(name, (32, 32, 3), 4, seed=0).layers[1].compute_dtype, "float32"
        )


class WeightStandardizationTest(parameterized.TestCase):
    def _conv_pair(self, kernel):
        """A StandardizedConv2D holding `kernel` and a plain Conv2D, both built."""
        standardized = models.StandardizedConv2D(kernel.shape[-1], 3, use_bias=False)
        plain = tf.keras.layers.Conv2D(kernel.shape[-1], 3, use_bias=False)
        for layer in (standardized, plain):
            layer.build((None, 8, 8, kernel.shape[2]))
        standardized.set_weights([kernel])
        return standardized, plain

    def test_output_is_conv_with_numpy_standardized_kernel(self):
        rng = np.random.default_rng(0)
        kernel = rng.normal(0.3, 2.0, (3, 3, 4, 6)).astype(np.float32)
        images = rng.random((2, 8, 8, 4), np.float32)
        standardized, plain = self._conv_pair(kernel)
        mean = kernel.mean(axis=(0, 1, 2), keepdims=True)
        std = np.sqrt(kernel.var(axis=(0, 1, 2), keepdims=True) + 1e-6)
        plain.set_weights([(kernel - mean) / std])
        np.testing.assert_allclose(
            standardized(images).numpy(), plain(images).numpy(), rtol=1e-4, atol=1e-4
        )
        # The stored kernel itself is left as it was.
        np.testing.assert_array_equal(standardized.get_weights()[0], kernel)

    def test_closed_form_gradient_matches_autodiff(self):
        rng = np.random.default_rng(2)
        kernel = tf.constant(rng.normal(0.5, 3.0, (3, 3, 4, 6)), tf.float32)
        upstream = tf.constant(rng.normal(size=(3, 3, 4, 6)), tf.float32)

        def reference(k):
            mean, variance = tf.nn.moments(k, axes=[0, 1, 2], keepdims=True)
            return (k - mean) * tf.math.rsqrt(variance + 1e-6)

        with tf.GradientTape(persistent=True) as tape:
            tape.watch(kernel)
            ours = models.standardize_filters(kernel)
            theirs = reference(kernel)
            loss_ours = tf.reduce_sum(ours * upstream)
            loss_theirs = tf.reduce_sum(theirs * upstream)
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=1e-5)
        np.testing.assert_allclose(
            tape.gradient(loss_ours, kernel).numpy(),
            tape.gradient(loss_theirs, kernel).numpy(),
            atol=1e-5,
        )

    def test_output_ignores_each_filters_scale_and_offset(self):
        rng = np.random.default_rng(1)
        kernel = rng.normal(size=(3, 3, 2, 5)).astype(np.float32)
        images = rng.random((1, 8, 8, 2), np.float32)
        standardized, _ = self._conv_pair(kernel)
        before = standardized(images).numpy()
        scale = rng.uniform(0.1, 10.0, 5).astype(np.float32)
        offset = rng.normal(size=5).astype(np.float32)
        standardized.set_weights([kernel * scale + offset])
        np.testing.assert_allclose(standardized(images).numpy(), before, rtol=1e-3, atol=1e-3)

    @parameterized.parameters("cnn", "resnet18", "mobilenetv2")
    def test_group_norm_models_standardize_every_conv_that_feeds_a_norm(self, name):
        model = _cached_model(name, (28, 28, 3))
        fed_norm = {
            layer._inbound_nodes[0].inbound_layers.name  # pylint: disable=protected-access
            for layer in _layers_of_type(model, tf.keras.layers.GroupNormalization)
        }
        standardized = {layer.name for layer in _layers_of_type(model, models.StandardizedConv2D)}
        plain_fed = {
            layer.name
            for layer in model.layers
            if layer.name in fed_norm and type(layer) is tf.keras.layers.Conv2D  # pylint: disable=unidiomatic-typecheck
        }
        self.assertNotEmpty(standardized)
        self.assertEmpty(plain_fed)
        self.assertTrue(standardized <= fed_norm, standardized - fed_norm)
        # MobileNetV2's depthwise convolutions stay plain.
        depthwise = _layers_of_type(model, tf.keras.layers.DepthwiseConv2D)
        self.assertEqual(bool(depthwise), name == "mobilenetv2")
        self.assertFalse(any(isinstance(layer, models.StandardizedConv2D) for layer in depthwise))

    @parameterized.product(
        name=("cnn", "resnet18", "mobilenetv2"),
        norm_and_flag=(("batch", True), ("none", True), ("group", False)),
    )
    def test_only_group_norm_with_the_flag_standardizes(self, name, norm_and_flag):
        norm, flag = norm_and_flag
        model = models.build_model(
            name, (28, 28, 1), _NUM_CLASSES, norm=norm, seed=0, weight_standardization=flag
        )
        self.assertEmpty(_layers_of_type(model, models.StandardizedConv2D))

    def test_same_weights_and_parameter_count_as_plain_convs(self):
        plain = models.build_model(
            "resnet18", (28, 28, 3), _NUM_CLASSES, seed=3, weight_standardization=False
        )
        standardized = models.build_model("resnet18", (28, 28, 3), _NUM_CLASSES, seed=3)
        self.assertEqual(models.count_params(plain), models.count_params(standardized))
        self.assertTrue(_weights_equal(plain, standardized))

    def test_model_config_round_trip(self):
        model = _cached_model("resnet18", (28, 28, 1))
        clone = tf.keras.Model.from_config(model.get_config())
        self.assertLen(
            _layers_of_type(clone, models.StandardizedConv2D),
            len(_layers_of_type(model, models.StandardizedConv2D)),
        )


class ResNet18Test(parameterized.TestCase):
    @parameterized.parameters("batch", "group")
    def test_param_count_matches_torchvision(self, norm):
        model = models.build_model("resnet18", (224, 224, 3), 1000, norm=norm, stem="imagenet")
        self.assertEqual(models.count_params(model)[0], _RESNET18_TRAINABLE)

    def test_param_count_without_top(self):
        model = models.build_model("resnet18", (224, 224, 3), 1000, norm="batch", include_top=False)
        trainable, total = models.count_params(model)
        self.assertEqual(trainable, _RESNET18_TRAINABLE_NO_TOP)
        # BatchNorm moving mean/variance: 2 per channel, 20 BN layers.
        self.assertEqual(total - trainable, 2 * 4800)

    @parameterized.parameters(
        ((28, 28, 3), "auto", (None, 14, 14, 64)),
        ((28, 28, 3), "imagenet", (None, 7, 7, 64)),
        ((28, 28, 3), "small", (None, 14, 14, 64)),
        ((128, 200, 1), "auto", (None, 32, 50, 64)),
        ((224, 127, 3), "auto", (None, 112, 64, 64)),
        ((224, 224, 3), "cifar", (None, 224, 224, 64)),
    )
    def test_stem(self, input_shape, stem, layer1_shape):
        model = models.build_model("resnet18", input_shape, 2, norm="none", stem=stem)
        self.assertEqual(model.get_layer("layer1_0_relu2").output_shape, layer1_shape)
        has_maxpool = "maxpool" in [layer.name for layer in model.layers]
        # Only the imagenet stem (stride 2 conv + stride 2 pool) has a pool.
        self.assertEqual(has_maxpool, layer1_shape[1] * 4 == input_shape[0])

    def test_layer_names(self):
        model = models.build_model("resnet18", (28, 28, 3), 2, norm="batch")
        names = {layer.name for layer in model.layers}
        for expected in (
            "conv1",
            "norm1",
            "layer1_0_conv1",
            "layer1_0_norm1",
            "layer4_1_conv2",
            "layer4_1_norm2",
            "layer2_0_downsample_conv",
            "layer2_0_downsample_norm",
            "avgpool",
            "logits",
        ):
            self.assertIn(expected, names)
        self.assertNotIn("layer1_0_downsample_conv", names)
        self.assertFalse(model.get_layer("conv1").use_bias)

    def test_no_norm_convs_have_bias(self):
        model = models.build_model("resnet18", (28, 28, 3), 2, norm="none")
        convs = _layers_of_type(model, tf.keras.layers.Conv2D)
        self.assertLen(convs, 20)
        self.assertTrue(all(conv.use_bias for conv in convs))

    def test_group_count(self):
        model = models.build_model("resnet18", (28, 28, 3), 2, norm="group")
        self.assertEqual(model.get_layer("norm1").groups, 32)
        self.assertEqual(model.get_layer("layer4_1_norm2").groups, 32)


class ApplicationParamCountTest(parameterized.TestCase):
    @parameterized.parameters(
        (True, _MOBILENETV2_TRAINABLE, _MOBILENETV2_TOTAL),
        (False, _MOBILENETV2_TRAINABLE_NO_TOP, _MOBILENETV2_TOTAL_NO_TOP),
    )
    def test_mobilenetv2(self, include_top, trainable, total):
        model = models.build_model(
            "mobilenetv2",
            (224, 224, 3),
            1000,
            norm="batch",
            include_top=include_top,
        )
        self.assertEqual(models.count_params(model), (trainable, total))

    def test_mobilenetv2_group_has_same_trainable_count(self):
        # Parameter counts do not depend on the spatial size, so a cached
        # 64x64x3 model with a 5-class head is enough.
        model = _cached_model("mobilenetv2", (64, 64, 3), norm="group")
        head = 1280 * _NUM_CLASSES + _NUM_CLASSES
        expected = _MOBILENETV2_TRAINABLE_NO_TOP + head
        self.assertEqual(models.count_params(model), (expected, expected))

    def test_resnet50_without_top(self):
        model = models.build_model("resnet50", (224, 224, 3), 1000, norm="batch", include_top=False)
        self.assertEqual(
            models.count_params(model),
            (_RESNET50_TRAINABLE_NO_TOP, _RESNET50_TOTAL_NO_TOP),
        )


class NormTest(parameterized.TestCase):
    @parameterized.product(name=("cnn", "resnet18", "mobilenetv2"), norm=("group", "batch"))
    def test_norm_layer_types(self, name, norm):
        model = _cached_model(name, (28, 28, 1), norm=norm)
        group = _layers_of_type(model, tf.keras.layers.GroupNormalization)
        batch = _layers_of_type(model, tf.keras.layers.BatchNormalization)
        if norm == "group":
            self.assertNotEmpty(group)
            self.assertEmpty(batch)
        else:
            self.assertNotEmpty(batch)
            self.assertEmpty(group)
        names = models.normalization_layer_names(model)
        self.assertNotEmpty(names)
        self.assertEqual(sorted(names), sorted(layer.name for layer in group + batch))
        self.assertTrue(all("norm" in n for n in names), names)

    def test_norm_names_do_not_depend_on_norm_type(self):
        group = _cached_model("mobilenetv2", (28, 28, 1), norm="group")
        batch = _cached_model("mobilenetv2", (28, 28, 1), norm="batch")
        self.assertEqual(
            models.normalization_layer_names(group),
            models.normalization_layer_names(batch),
        )
        self.assertIn("Conv1_norm", models.normalization_layer_names(batch))

    @parameterized.parameters("cnn", "resnet18", "mobilenetv2")
    def test_none_has_no_norm_layers(self, name):
        model = _cached_model(name, (28, 28, 3), norm="none")
        self.assertEmpty(models.normalization_layer_names(model))

    def test_mobilenetv2_none_enables_conv_bias(self):
        model = _cached_model("mobilenetv2", (28, 28, 3), norm="none")
        self.assertTrue(model.get_layer("Conv1").use_bias)
        self.assertTrue(model.get_layer("block_1_depthwise").use_bias)

    def test_mobilenetv2_group_counts_divide_channels(self):
        model = _cached_model("mobilenetv2", (28, 28, 1), norm="group")
        for layer in _layers_of_type(model, tf.keras.layers.GroupNormalization):
            channels = layer.input_shape[-1]
            self.assertEqual(channels % layer.groups, 0, layer.name)
            self.assertEqual(layer.groups, models.num_groups(channels))

    @parameterized.parameters((64, 32), (32, 32), (24, 24), (144, 24), (16, 16), (960, 32), (7, 7))
    def test_num_groups(self, channels, groups):
        self.assertEqual(models.num_groups(channels), groups)


class SeedTest(parameterized.TestCase):
    @parameterized.parameters(("cnn", "group"), ("resnet18", "batch"), ("mobilenetv2", "batch"))
    def test_same_seed_same_weights(self, name, norm):
        def build(seed):
            return models.build_model(name, (28, 28, 3), 3, norm=norm, seed=seed)

        reference = build(7)
        self.assertTrue(_weights_equal(reference, build(7)))
        self.assertFalse(_weights_equal(reference, build(8)))

    def test_unseeded_builds_differ(self):
        first = models.build_model("cnn", (28, 28, 1), 2)
        second = models.build_model("cnn", (28, 28, 1), 2)
        self.assertFalse(_weights_equal(first, second))

    def test_layers_get_distinct_init(self):
        model = models.build_model("resnet18", (28, 28, 3), 2, seed=0)
        self.assertFalse(
            np.array_equal(
                model.get_layer("layer1_0_conv1").kernel.numpy(),
                model.get_layer("layer1_0_conv2").kernel.numpy(),
            )
        )


class CountParamsTest(absltest.TestCase):
    def test_cnn(self):
        model = models.build_model("cnn", (28, 28, 1), 10, norm="batch")
        trainable, total = models.count_params(model)
        self.assertEqual(total, model.count_params())
        self.assertEqual(total - trainable, 2 * (32 + 64))
        self.assertBetween(trainable, 10_000, 100_000)


class ValidationTest(parameterized.TestCase):
    @parameterized.named_parameters(
        ("unknown_name", dict(name="vgg16"), "Unknown model"),
        ("unknown_norm", dict(norm="layer"), "Unknown norm"),
        ("unknown_stem", dict(stem="tiny"), "Unknown stem"),
        ("stem_other_model", dict(name="cnn", stem="cifar"), "only applies"),
        ("two_channels", dict(input_shape=(28, 28, 2)), "channels"),
        ("four_channels", dict(input_shape=(28, 28, 4)), "channels"),
        ("rank2_shape", dict(input_shape=(28, 28)), "input_shape"),
        ("zero_size", dict(input_shape=(0, 28, 1)), "input_shape"),
        ("non_int_shape", dict(input_shape=("a", 28, 1)), "input_shape"),
        ("one_class", dict(num_classes=1), "num_classes"),
        ("bool_classes", dict(num_classes=True), "num_classes"),
    )
    def test_raises(self, overrides, message):
        kwargs = dict(name="resnet18", input_shape=(28, 28, 1), num_classes=2)
        kwargs.update(overrides)
        with self.assertRaisesRegex(models.ModelError, message):
            models.build_model(**kwargs)

    def test_model_error_is_value_error(self):
        self.assertTrue(issubclass(models.ModelError, ValueError))


if __name__ == "__main__":
    absltest.main()
