"""Keras model builders for federated image classification on MedMNIST.

Every builder returns a fresh, uncompiled `tf.keras` functional model that maps
float32 images of shape `(H, W, C)` (C in {1, 3}) to logits of shape
`(batch, num_classes)` (no softmax). Models hold no Python-side state, so
`build_model` can be used directly inside the `model_fn` passed to
`tff.learning.models.from_keras_model`.

Models expect inputs that the data pipeline has already scaled/normalized;
no preprocessing layers are included (except a resize to 32x32 for the Keras
ImageNet-layout backbones on inputs smaller than 32 pixels).

Convolutions that feed a GroupNormalization are weight-standardized by default
(`StandardizedConv2D`), the GroupNorm recipe of Big Transfer.

Normalization layers are named with "norm" in their names (e.g.
"layer1_0_norm1", "block_1_expand_norm") and can be listed with
`normalization_layer_names`, so that FedBN-style algorithms can keep them
local.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

MODEL_NAMES = ("cnn", "resnet18", "resnet50", "mobilenetv2", "mobilenetv2_small")
NORMS = ("group", "batch", "none")
STEMS = ("auto", "imagenet", "small", "cifar")

_MAX_GROUPS = 32
# Keras's application backbones refuse inputs smaller than this.
_MIN_APPLICATION_SIZE = 32
# mobilenetv2_small: Keras MobileNetV2 layers that run at stride 1 instead of 2 (the stem
# convolution and block 1's depthwise convolution), leaving an output stride of 8.
_SMALL_UNSTRIDED = ("Conv1", "block_1_depthwise")
# mobilenetv2_small: the ZeroPadding2D layers before these strided convolutions are dropped.
_SMALL_UNPADDED = ("block_1_pad",)
# mobilenetv2_small width multiplier (Keras's `alpha`).
_SMALL_ALPHA = 1.0
_SMALL_ZERO_INIT_RESIDUAL = True
# Inputs at least this large get the ImageNet stem under stem="auto".
_IMAGENET_STEM_MIN_SIZE = 128
# ResNet-18 normalization settings (PyTorch defaults: eps 1e-5, momentum 0.1).
_RESNET18_EPSILON = 1e-5
_RESNET18_BN_MOMENTUM = 0.9
# Added to each filter's kernel variance in StandardizedConv2D (as timm's StdConv2d).
_WS_EPSILON = 1e-6
_NORM_LAYER_TYPES = (
    tf.keras.layers.BatchNormalization,
    tf.keras.layers.GroupNormalization,
    tf.keras.layers.LayerNormalization,
)


# A layer-config rewrite for `_replay`: (class_name, config, call_input) -> config or None.
_Rewrite = Callable[[str, dict[str, Any], tf.Tensor], dict[str, Any] | None]


class ModelError(ValueError):
    """Raised for an invalid model configuration."""


@tf.keras.utils.register_keras_serializable(package="tff_vision")
class StandardizedConv2D(tf.keras.layers.Conv2D):
    """Conv2D with weight standardization (Qiao et al., 2019).

    Before each use, every output filter's kernel is standardized to zero
    mean and unit variance over (height, width, input channels). The layer's
    output is then invariant to each filter's scale and offset, which smooths
    the loss landscape; with GroupNormalization after it this closes most of
    GroupNorm's gap to BatchNorm (Big Transfer, Kolesnikov et al., 2020, uses
    the pair for the same reason: BatchNorm does not suit its setting). The
    stored kernel, its initializer and the parameter count are those of a
    plain Conv2D; the statistics are computed in float32 under any
    mixed-precision policy, and the result is cast to the compute dtype.
    """

    def convolution_op(self, inputs: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
        standardized = standardize_filters(tf.cast(kernel, tf.float32))
        return super().convolution_op(inputs, tf.cast(standardized, self.compute_dtype))


@tf.custom_gradient
def standardize_filters(kernel: tf.Tensor):
    """Standardizes each output filter of a `(h, w, in, out)` kernel.

    Returns `(kernel - mean) / sqrt(variance + eps)` with the statistics over
    the first three axes, with its gradient in closed form: for upstream `g`,
    `(g - mean(g) - y * mean(g * y)) / sqrt(variance + eps)` (y the output).
    That is two reductions and a few elementwise ops, against the dozen small
    ops (broadcasts, tiles, squared differences) of differentiating
    `tf.nn.moments`; a ResNet-18 step then spends ~30% less on standardizing.
    """
    axes = [0, 1, 2]
    centered = kernel - tf.reduce_mean(kernel, axis=axes, keepdims=True)
    inv_std = tf.math.rsqrt(
        tf.reduce_mean(tf.square(centered), axis=axes, keepdims=True) + _WS_EPSILON
    )
    standardized = centered * inv_std

    def grad(upstream: tf.Tensor) -> tf.Tensor:
        mean_upstream = tf.reduce_mean(upstream, axis=axes, keepdims=True)
        projection = tf.reduce_mean(upstream * standardized, axis=axes, keepdims=True)
        return inv_std * (upstream - mean_upstream - standardized * projection)

    return standardized, grad


class _SeedStream:
    """Hands out per-initializer integer seeds derived from one base seed.

    With `seed=None` every initializer is unseeded (nondeterministic).
    """

    def __init__(self, seed: int | None):
        self._rng = None if seed is None else np.random.default_rng(seed)

    def next(self) -> int | None:
        """Returns the next derived seed, or None when unseeded."""
        if self._rng is None:
            return None
        return int(self._rng.integers(0, 2**31 - 1))


def num_groups(channels: int, max_groups: int = _MAX_GROUPS) -> int:
    """Returns the group count used for GroupNormalization.

    Args:
        channels: Number of channels being normalized.
        max_groups: Upper bound on the number of groups.

    Returns:
        `max_groups` if it divides `channels`, else the largest divisor of
        `channels` that is <= `max_groups`.
    """
    for groups in range(min(max_groups, channels), 0, -1):
        if channels % groups == 0:
            return groups
    return 1


def normalization_layer_names(model: tf.keras.Model) -> list[str]:
    """Lists the names of all normalization layers of `model`.

    Batch, group and layer normalization layers are found by type, descending
    into nested models. For models built by `build_model` every returned name
    contains "norm"; the list is empty when built with `norm="none"`.

    Args:
        model: A Keras model.

    Returns:
        Layer names in the model's layer order.
    """
    names = []
    for layer in model.layers:
        if isinstance(layer, _NORM_LAYER_TYPES):
            names.append(layer.name)
        elif isinstance(layer, tf.keras.Model):
            names.extend(normalization_layer_names(layer))
    return names


def count_params(model: tf.keras.Model) -> tuple[int, int]:
    """Counts the parameters of `model`.

    Args:
        model: A built Keras model.

    Returns:
        `(trainable, total)` scalar counts; `total` also includes
        non-trainable weights such as BatchNormalization moving statistics.
    """

    def _count(weights: list[tf.Variable]) -> int:
        unique = {id(w): w for w in weights}
        return sum(w.shape.num_elements() for w in unique.values())

    return _count(model.trainable_weights), _count(model.weights)


def build_model(
    name: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    norm: str = "group",
    seed: int | None = None,
    stem: str = "auto",
    include_top: bool = True,
    weight_standardization: bool = True,
) -> tf.keras.Model:
    """Builds a fresh, uncompiled image classifier.

    Models:
        * "cnn": small fast CNN (2 x [conv3x3 -> norm -> relu -> maxpool],
          global average pooling, dense 128 -> relu, dense logits). About
          28k parameters for 1-channel inputs and 10 classes.
        * "resnet18": ResNet-18 (BasicBlock [2, 2, 2, 2], widths 64-512,
          1x1 projection shortcuts), matching torchvision's parameter count.
          Convolutions followed by normalization have no bias. Uses "same"
          padding, so stride-2 convs pad asymmetrically (unlike PyTorch);
          output sizes are identical. The last norm of each residual branch
          starts with scale 0 (zero-init residual, Goyal et al., 2017).
        * "resnet50": `tf.keras.applications.ResNet50` backbone (weights=None,
          average pooling) + dense logits.
        * "mobilenetv2": `tf.keras.applications.MobileNetV2` backbone
          (alpha 1.0, weights=None, average pooling) + dense logits: the
          ImageNet layout (output stride 32) for inputs of 96-224 px.
        * "mobilenetv2_small": the same Keras MobileNetV2 layers (stem,
          17 inverted-residual blocks, 1x1 head conv to 1280, alpha 1.0) with
          the stem and block 1 at stride 1 instead of 2, as the CIFAR
          adaptations of MobileNetV2 do: output stride 8, so a 28 or 32 px
          input ends at 4x4 (the ImageNet layout ends at 1x1 there and does
          not learn). No resize: a 28 px image is used as it is. The
          projection norm of each residual block starts with scale 0, so the
          block starts as the identity (as ResNet-18's here). Same
          parameters as "mobilenetv2"; a separate name rather than a switch
          on input size, so that "mobilenetv2" means one architecture at
          every size (recorded runs stay comparable) and the small layout
          can be chosen for 64 px inputs too.

    The application backbones are rebuilt layer by layer (flat, no nested
    sub-model) so that: their BatchNormalization layers are renamed to contain
    "norm" (e.g. "conv1_bn" -> "conv1_norm", "bn_Conv1" -> "Conv1_norm");
    `norm="group"` replaces each BatchNormalization by a GroupNormalization
    with the same epsilon/initializers; `norm="none"` drops them and turns on
    the bias of the convolutions that fed them. Inputs with height or width
    below 32 are first bilinearly resized (layer "resize") to at least 32,
    which Keras requires ("mobilenetv2_small" excepted: its zero padding is
    recomputed for the actual input size). Grey (1-channel) inputs are
    supported natively.

    Normalization (`norm`):
        * "group": GroupNormalization with 32 groups, or the largest divisor
          of the channel count that is <= 32 (see `num_groups`).
        * "batch": BatchNormalization (ResNet-18: momentum 0.9, eps 1e-5;
          applications: Keras's own settings).
        * "none": no normalization layers.

    With `weight_standardization` (the default) every convolution that feeds
    a GroupNormalization is a `StandardizedConv2D` (GroupNorm + weight
    standardization, as in Big Transfer); MobileNetV2's depthwise
    convolutions stay plain. It changes nothing for "batch" or "none".

    The classifier ("logits", Dense) is zero-initialized, so every model
    starts from the uniform prediction.

    Determinism: when `seed` is given, every randomly initialized weight gets
    its own seeded initializer derived from `seed` (no global RNG state is
    touched), so two calls with the same seed and arguments give identical
    weights, also when built inside a `tf.function`/TFF graph. With
    `seed=None` initialization is random.

    Args:
        name: One of `MODEL_NAMES`.
        input_shape: `(height, width, channels)` with channels 1 or 3.
        num_classes: Number of output logits, >= 2.
        norm: One of `NORMS`.
        seed: Optional integer seed for weight initialization.
        stem: ResNet-18 stem, one of `STEMS`. "imagenet" = 7x7 conv stride 2
            + 3x3 max-pool stride 2; "small" = 3x3 conv stride 2, no pool
            (a quarter of "cifar"'s compute at 28px); "cifar" = 3x3 conv
            stride 1, no pool (as MedMNIST's 28px ResNet); "auto" = "imagenet" if
            min(height, width) >= 128 else "small". Other models accept only
            "auto".
        include_top: If False, the dense classifier is omitted and the model
            outputs the globally average-pooled features `(batch, features)`
            (`num_classes` is still validated but unused).
        weight_standardization: Whether convolutions that feed GroupNorm
            standardize their kernels (see above). Only matters for
            `norm="group"`.

    Returns:
        An uncompiled functional `tf.keras.Model` named `name` whose input
        layer is named "image".

    Raises:
        ModelError: If any argument is invalid.
    """
    if name not in MODEL_NAMES:
        raise ModelError(f"Unknown model {name!r}; use one of {', '.join(MODEL_NAMES)}.")
    if norm not in NORMS:
        raise ModelError(f"Unknown norm {norm!r}; use one of {', '.join(NORMS)}.")
    if stem not in STEMS:
        raise ModelError(f"Unknown stem {stem!r}; use one of {', '.join(STEMS)}.")
    if stem != "auto" and name != "resnet18":
        raise ModelError(f"stem={stem!r} only applies to resnet18; use stem='auto' for {name!r}.")
    input_shape = _validate_input_shape(input_shape)
    if (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, (int, np.integer))
        or num_classes < 2
    ):
        raise ModelError(
            f"num_classes must be an integer >= 2, got {num_classes!r}; use 2 for binary tasks."
        )

    seeds = _SeedStream(seed)
    standardize = bool(weight_standardization) and norm == "group"
    inputs = tf.keras.Input(shape=input_shape, dtype=tf.float32, name="image")
    if name == "cnn":
        features = _cnn_features(inputs, norm, seeds, standardize)
    elif name == "resnet18":
        if stem == "auto":
            stem = "imagenet" if min(input_shape[:2]) >= _IMAGENET_STEM_MIN_SIZE else "small"
        features = _resnet18_features(inputs, norm, stem, seeds, standardize)
    elif name == "mobilenetv2_small":
        features = _mobilenetv2_small_features(inputs, norm, seeds, standardize)
    else:
        features = _application_features(name, inputs, norm, seeds, standardize)

    outputs = features
    if include_top:
        # Zero-initialized classifier: every model starts at the uniform
        # prediction (loss log(C)) instead of large random logits, which
        # makes the first rounds of training from scratch far steadier.
        # float32 logits under a mixed-precision policy too (stable softmax/loss).
        outputs = tf.keras.layers.Dense(
            int(num_classes), kernel_initializer="zeros", dtype="float32", name="logits"
        )(features)
    return tf.keras.Model(inputs=inputs, outputs=outputs, name=name)


def _validate_input_shape(input_shape: Any) -> tuple[int, int, int]:
    """Checks `input_shape` is (H, W, C) with positive sizes and C in {1, 3}."""
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        raise ModelError(
            f"input_shape must be (height, width, channels), got "
            f"{input_shape!r}; e.g. use (28, 28, 1)."
        ) from None
    if len(shape) != 3 or min(shape) < 1:
        raise ModelError(
            f"input_shape must be 3 positive ints (height, width, channels), "
            f"got {input_shape!r}; e.g. use (28, 28, 1)."
        )
    if shape[2] not in (1, 3):
        raise ModelError(
            f"input channels must be 1 (grey) or 3 (RGB), got {shape[2]}; "
            "convert images to grey or RGB."
        )
    return shape


def _conv_initializer(seeds: _SeedStream) -> tf.keras.initializers.Initializer:
    """He-normal (fan_out) init as torchvision's ResNet; fresh per layer."""
    return tf.keras.initializers.VarianceScaling(
        scale=2.0,
        mode="fan_out",
        distribution="untruncated_normal",
        seed=seeds.next(),
    )


def _norm_layer(
    norm: str,
    channels: int,
    name: str,
    epsilon: float = _RESNET18_EPSILON,
    zero_gamma: bool = False,
) -> tf.keras.layers.Layer | None:
    """Returns the normalization layer for `norm`, or None for "none"."""
    gamma = "zeros" if zero_gamma else "ones"
    if norm == "group":
        return tf.keras.layers.GroupNormalization(
            groups=num_groups(channels),
            epsilon=epsilon,
            name=name,
            gamma_initializer=gamma,
        )
    if norm == "batch":
        return tf.keras.layers.BatchNormalization(
            momentum=_RESNET18_BN_MOMENTUM,
            epsilon=epsilon,
            name=name,
            gamma_initializer=gamma,
        )
    return None


def _conv_norm(
    x: tf.Tensor,
    filters: int,
    kernel_size: int,
    strides: int,
    norm: str,
    seeds: _SeedStream,
    conv_name: str,
    norm_name: str,
    standardize: bool,
    zero_gamma: bool = False,
) -> tf.Tensor:
    """Conv2D ("same", bias only without norm) followed by optional norm.

    `standardize` makes the convolution a `StandardizedConv2D`.
    """
    conv_class = StandardizedConv2D if standardize else tf.keras.layers.Conv2D
    x = conv_class(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=(norm == "none"),
        kernel_initializer=_conv_initializer(seeds),
        name=conv_name,
    )(x)
    layer = _norm_layer(norm, filters, norm_name, zero_gamma=zero_gamma)
    return x if layer is None else layer(x)


def _cnn_features(inputs: tf.Tensor, norm: str, seeds: _SeedStream, standardize: bool) -> tf.Tensor:
    """Small CNN trunk: 2 conv/pool blocks, GAP, dense 128."""
    x = inputs
    for i, filters in enumerate((32, 64), start=1):
        x = _conv_norm(x, filters, 3, 1, norm, seeds, f"conv{i}", f"norm{i}", standardize)
        x = tf.keras.layers.ReLU(name=f"relu{i}")(x)
        x = tf.keras.layers.MaxPooling2D(2, padding="same", name=f"pool{i}")(x)
    x = tf.keras.layers.GlobalAveragePooling2D(name="avgpool")(x)
    return tf.keras.layers.Dense(
        128,
        activation="relu",
        kernel_initializer=tf.keras.initializers.GlorotUniform(seed=seeds.next()),
        name="fc1",
    )(x)


def _basic_block(
    x: tf.Tensor,
    filters: int,
    strides: int,
    norm: str,
    seeds: _SeedStream,
    prefix: str,
    standardize: bool,
) -> tf.Tensor:
    """ResNet BasicBlock with a projection shortcut when the shape changes."""
    shortcut = x
    y = _conv_norm(
        x,
        filters,
        3,
        strides,
        norm,
        seeds,
        f"{prefix}_conv1",
        f"{prefix}_norm1",
        standardize,
    )
    y = tf.keras.layers.ReLU(name=f"{prefix}_relu1")(y)
    # Zero-initialized last norm scale: each residual block starts as the
    # identity (Goyal et al., 2017), which trains markedly faster from scratch.
    y = _conv_norm(
        y,
        filters,
        3,
        1,
        norm,
        seeds,
        f"{prefix}_conv2",
        f"{prefix}_norm2",
        standardize,
        zero_gamma=True,
    )
    if strides != 1 or x.shape[-1] != filters:
        shortcut = _conv_norm(
            x,
            filters,
            1,
            strides,
            norm,
            seeds,
            f"{prefix}_downsample_conv",
            f"{prefix}_downsample_norm",
            standardize,
        )
    y = tf.keras.layers.Add(name=f"{prefix}_add")([y, shortcut])
    return tf.keras.layers.ReLU(name=f"{prefix}_relu2")(y)


def _resnet18_features(
    inputs: tf.Tensor, norm: str, stem: str, seeds: _SeedStream, standardize: bool
) -> tf.Tensor:
    """ResNet-18 trunk up to global average pooling."""
    if stem == "imagenet":
        x = _conv_norm(inputs, 64, 7, 2, norm, seeds, "conv1", "norm1", standardize)
        x = tf.keras.layers.ReLU(name="relu1")(x)
        x = tf.keras.layers.MaxPooling2D(3, strides=2, padding="same", name="maxpool")(x)
    else:
        strides = 2 if stem == "small" else 1
        x = _conv_norm(inputs, 64, 3, strides, norm, seeds, "conv1", "norm1", standardize)
        x = tf.keras.layers.ReLU(name="relu1")(x)
    for stage, filters in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            strides = 2 if (stage > 1 and block == 0) else 1
            x = _basic_block(x, filters, strides, norm, seeds, f"layer{stage}_{block}", standardize)
    return tf.keras.layers.GlobalAveragePooling2D(name="avgpool")(x)


def _application_features(
    name: str, inputs: tf.Tensor, norm: str, seeds: _SeedStream, standardize: bool
) -> tf.Tensor:
    """Keras application backbone replayed onto `inputs` (see build_model)."""
    height, width, channels = inputs.shape[1:]
    x = inputs
    if min(height, width) < _MIN_APPLICATION_SIZE:
        height = max(height, _MIN_APPLICATION_SIZE)
        width = max(width, _MIN_APPLICATION_SIZE)
        x = tf.keras.layers.Resizing(height, width, interpolation="bilinear", name="resize")(x)
    constructor: Callable[..., tf.keras.Model] = (
        tf.keras.applications.ResNet50 if name == "resnet50" else tf.keras.applications.MobileNetV2
    )
    template = constructor(
        weights=None,
        include_top=False,
        input_shape=(height, width, channels),
        pooling="avg",
    )
    return _replay(template, x, norm, seeds, standardize)


def _mobilenetv2_small_features(
    inputs: tf.Tensor, norm: str, seeds: _SeedStream, standardize: bool
) -> tf.Tensor:
    """Keras MobileNetV2 replayed with output stride 8 (see build_model).

    The template is Keras's own network (built at >= 32 px, which it
    requires); the replay sets the stem and block 1 to stride 1 and computes
    each remaining strided block's zero padding for the actual input size.
    """
    height, width, channels = inputs.shape[1:]
    template = tf.keras.applications.MobileNetV2(
        weights=None,
        include_top=False,
        alpha=_SMALL_ALPHA,
        input_shape=(
            max(height, _MIN_APPLICATION_SIZE),
            max(width, _MIN_APPLICATION_SIZE),
            channels,
        ),
        pooling="avg",
    )
    residual_norms = set()
    if _SMALL_ZERO_INIT_RESIDUAL:
        residual_norms = {
            f"{layer.name[: -len('add')]}project_BN"
            for layer in template.layers
            if isinstance(layer, tf.keras.layers.Add)
        }
    rewrite = functools.partial(_small_rewrite, residual_norms=frozenset(residual_norms))
    return _replay(template, inputs, norm, seeds, standardize, rewrite=rewrite)


def _small_rewrite(
    class_name: str,
    config: dict[str, Any],
    call_input: tf.Tensor,
    *,
    residual_norms: frozenset[str],
) -> dict[str, Any] | None:
    """Layer config of mobilenetv2_small for a MobileNetV2 layer (None: drop it).

    Norms in `residual_norms` start with scale 0, so that their block starts
    as the identity.
    """
    name = config["name"]
    if name in _SMALL_UNPADDED:
        return None
    if name in _SMALL_UNSTRIDED:
        return dict(config, strides=(1, 1), padding="same")
    if class_name == "ZeroPadding2D":
        return dict(config, padding=_correct_pad(call_input.shape[1:3]))
    if name in residual_norms:
        return dict(config, gamma_initializer={"class_name": "Zeros", "config": {}})
    return config


def _correct_pad(size: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Keras MobileNetV2's padding before a 3x3 stride-2 conv on a `size` map.

    As `keras.applications.imagenet_utils.correct_pad`: one pixel on each
    side, less the top/left one along an even dimension.
    """
    (top, bottom), (left, right) = ((int(dim) % 2, 1) for dim in size)
    return (top, bottom), (left, right)


def _renamed_norm(name: str) -> str:
    """Maps a Keras BN layer name to one containing "norm"."""
    lower = name.lower()
    if lower.endswith("_bn"):
        base = name[:-3]
    elif lower.startswith("bn_"):
        base = name[3:]
    else:
        base = name
    return f"{base}_norm"


def _seeded(config: dict[str, Any], seeds: _SeedStream) -> dict[str, Any]:
    """Gives every random initializer in a layer config its own seed."""
    config = dict(config)
    for key, value in config.items():
        if (
            key.endswith("_initializer")
            and isinstance(value, dict)
            and "seed" in value.get("config", {})
        ):
            value = dict(value)
            value["config"] = dict(value["config"], seed=seeds.next())
            config[key] = value
    return config


def _replay(
    template: tf.keras.Model,
    inputs: tf.Tensor,
    norm: str,
    seeds: _SeedStream,
    standardize: bool = False,
    rewrite: _Rewrite | None = None,
) -> tf.Tensor:
    """Re-creates `template`'s layers (fresh weights) on top of `inputs`.

    BatchNormalization layers are renamed, replaced by GroupNormalization
    (norm="group") or dropped (norm="none", enabling the bias of the layers
    that fed them). `rewrite` may first change any layer's config.

    Args:
        template: A functional single-input, single-output Keras model whose
            layers are each called once.
        inputs: Symbolic tensor to feed in place of the template's input.
        norm: One of `NORMS`.
        seeds: Seed stream for the new layers' initializers.
        standardize: Rebuild the (non-depthwise) Conv2D layers that feed a
            normalization layer as `StandardizedConv2D`.
        rewrite: Optional `(class_name, config, call_input) -> config` for
            each template layer: the config to rebuild it from (a
            BatchNormalization config also configures its replacement), or
            None to drop the layer (its input passes through).

    Returns:
        The symbolic output tensor.
    """
    config = template.get_config()
    layer_configs = config["layers"]
    bn_class = tf.keras.layers.BatchNormalization
    fed_norm = set()
    for layer_config in layer_configs:
        if layer_config["class_name"] == "BatchNormalization":
            for node in layer_config["inbound_nodes"]:
                fed_norm.update(inbound[0] for inbound in node)

    outputs: dict[str, tf.Tensor] = {}
    for layer_config in layer_configs:
        name = layer_config["name"]
        nodes = layer_config["inbound_nodes"]
        if not nodes:  # Input layer.
            outputs[name] = inputs
            continue
        if len(nodes) != 1:
            raise ModelError(
                f"Cannot rebuild shared layer {name!r} of {template.name}; "
                "use norm='batch' or another model."
            )
        args = [outputs[inbound[0]] for inbound in nodes[0]]
        call_input = args[0] if len(args) == 1 else args
        layer = template.get_layer(name)
        layer_cfg = _seeded(layer_config["config"], seeds)
        if rewrite is not None:
            layer_cfg = rewrite(layer_config["class_name"], layer_cfg, call_input)
            if layer_cfg is None:
                outputs[name] = call_input
                continue
        if isinstance(layer, bn_class):
            if norm == "none":
                outputs[name] = call_input
                continue
            new_name = _renamed_norm(name)
            if norm == "group":
                new_layer = tf.keras.layers.GroupNormalization(
                    groups=num_groups(int(call_input.shape[-1])),
                    epsilon=layer_cfg["epsilon"],
                    center=layer_cfg["center"],
                    scale=layer_cfg["scale"],
                    beta_initializer=layer_cfg["beta_initializer"],
                    gamma_initializer=layer_cfg["gamma_initializer"],
                    beta_regularizer=layer_cfg["beta_regularizer"],
                    gamma_regularizer=layer_cfg["gamma_regularizer"],
                    name=new_name,
                )
            else:
                new_layer = bn_class.from_config(dict(layer_cfg, name=new_name))
        else:
            if norm == "none" and name in fed_norm and "use_bias" in layer_cfg:
                layer_cfg["use_bias"] = True
            layer_class = type(layer)
            if standardize and name in fed_norm and layer_class is tf.keras.layers.Conv2D:
                layer_class = StandardizedConv2D
            new_layer = layer_class.from_config(layer_cfg)
        outputs[name] = new_layer(call_input, **nodes[0][0][3])
    ((output_name, _, _),) = config["output_layers"]
    return outputs[output_name]
