"""tff-vision: federated learning on medical images, simulated with TensorFlow Federated."""

# Importing the runtime registers its exit hook, which releases the execution context that
# `import tensorflow_federated` installs before interpreter teardown (see runtime.py).
from tff_vision import runtime as _runtime  # noqa: F401
