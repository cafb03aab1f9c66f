"""Runners: absl command-line programs over the `tff_vision` library.

TensorFlow's C++ logs would drown the progress lines; the level is set here,
before any runner imports TensorFlow.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
