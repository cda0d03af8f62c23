"""The one place that imports TensorFlow, so that GPUs are hidden from it first thing.

The input pipeline runs on the host CPU. Left alone, TensorFlow would claim the memory of every
GPU it sees, memory JAX needs. Only modules of this package import this one, and only when a
pipeline is built, so `import alexnet_jax.data` itself stays free of TensorFlow.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # keep TensorFlow's C++ INFO chatter out of logs

import tensorflow as tf  # noqa: E402

try:
  tf.config.set_visible_devices([], "GPU")
except RuntimeError:
  # TensorFlow was already initialised elsewhere in this process; its devices are fixed now.
  pass

AUTOTUNE = tf.data.AUTOTUNE

__all__ = ["tf", "AUTOTUNE"]
