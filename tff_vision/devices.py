"""Devices and numerics of this process: GPUs, TF op determinism, mixed precision.

Settings are applied once per run, before models are built. Op determinism is
also passed to the TFF workers started afterwards (`runtime` reads
`op_determinism_enabled()` when it starts one).
"""

from __future__ import annotations

import os
import pathlib
import platform

from absl import logging

OP_DETERMINISM_MODES = ("auto", "on", "off")

# CPU features that decide which kernels oneDNN (TF's CPU backend) runs: results can differ
# in their last bits between CPUs that differ in these.
_CPU_FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")

# Whether TF op determinism is on (`set_op_determinism`); workers started later follow it.
_op_determinism = False


def op_determinism_enabled() -> bool:
    """Whether the last `set_op_determinism` turned determinism on."""
    return _op_determinism


def set_op_determinism(mode: str = "auto") -> bool:
    """Turns TF op determinism on or off, here and in the TFF workers started afterwards.

    Op determinism (`tf.config.experimental.enable_op_determinism`, and
    `TF_DETERMINISTIC_OPS=1` for a `worker_binary`) picks deterministic GPU
    kernels, refuses unseeded random ops and runs each graph's ops in one fixed
    order. On CPU the kernels this package uses are reproducible without it
    (two runs of the same experiment agree to the last bit), and the fixed op
    order costs ~10% of a round (measured with `experiments.benchmark`), so
    "auto" turns it on only when a GPU is present, where kernels such as cuDNN
    convolution gradients otherwise vary from run to run.

    Args:
        mode: "on", "off" or "auto" (on when TF sees a GPU).

    Returns:
        Whether op determinism is now on.
    """
    global _op_determinism
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from tensorflow.python.framework import config  # pylint: disable=g-import-not-at-top

    if mode not in OP_DETERMINISM_MODES:
        raise ValueError(
            f"unknown op determinism mode {mode!r}; use one of {', '.join(OP_DETERMINISM_MODES)}"
        )
    enabled = mode == "on" or (mode == "auto" and bool(tf.config.list_physical_devices("GPU")))
    if enabled:
        tf.config.experimental.enable_op_determinism()
    else:
        config.disable_op_determinism()
    _op_determinism = enabled
    return enabled


def set_mixed_precision(enabled: bool) -> str:
    """Sets the Keras dtype policy of the models built afterwards; returns its name.

    On: "mixed_bfloat16" (float32 variables, bfloat16 compute; the models keep
    float32 logits). bfloat16 has float32's exponent range, so, unlike float16,
    it needs no loss scaling, which TFF's optimizers do not do. It pays on GPUs
    with bfloat16 units (A100, H100/H200); on CPUs only with bfloat16
    instructions (AVX512-BF16, AMX).
    Client updates, aggregation and the server state stay float32.
    """
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    policy = "mixed_bfloat16" if enabled else "float32"
    tf.keras.mixed_precision.set_global_policy(policy)
    return policy


def configure_devices(verbose: bool = True) -> str:
    """Enables GPU memory growth when a GPU is present; returns a description.

    The description names the GPUs, or the CPU with `cpu_description`, so that
    every summary says on what hardware its numbers were computed.
    """
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    gpus = tf.config.list_physical_devices("GPU")
    names = []
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # Already initialized.
            pass
        names.append(tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name))
    if gpus:
        description = f"{len(gpus)} GPU(s): {', '.join(names)}"
    else:
        description = f"CPU ({os.cpu_count()} cores: {cpu_description()})"
    if verbose:
        logging.info("devices: %s", description)
    return description


def configure(op_determinism: str, mixed_precision: bool) -> tuple[str, str]:
    """Sets TF's devices, op determinism and precision, as a run needs them.

    Returns:
        The device (`configure_devices`), and a line naming all three.
    """
    device = configure_devices(verbose=False)
    determinism = set_op_determinism(op_determinism)
    precision = set_mixed_precision(mixed_precision)
    machine = f"{device}, op determinism {'on' if determinism else 'off'}"
    return device, machine + (f", {precision}" if mixed_precision else "")


def cpu_description(cpuinfo: str | None = None) -> str:
    """The CPU's model name and which of `_CPU_FEATURES` it has, e.g. "Xeon, avx2 avx512f".

    oneDNN chooses its convolution and matrix kernels by these instruction sets
    (and cache sizes) when the process starts, so the same run on two CPU types
    can differ in the last bits, and after many rounds in the third decimal.
    `cpuinfo` is the text of /proc/cpuinfo (read when None); where there is none
    (not Linux), the model is `platform.processor()` and the features are unknown.
    """
    if cpuinfo is None:
        path = pathlib.Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.exists() else ""
    fields = dict(
        (key.strip(), value.strip())
        for key, _, value in (line.partition(":") for line in cpuinfo.splitlines())
        if value
    )
    model = fields.get("model name") or platform.processor() or "unknown model"
    if "flags" not in fields:
        return f"{model}, instruction sets unknown"
    flags = set(fields["flags"].split())
    return f"{model}, {' '.join(f for f in _CPU_FEATURES if f in flags) or 'no avx2'}"


def quiet_tensorflow() -> None:
    """Silences TF's C++ logs (and its cuDNN noise on CPU); call before importing TF."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
