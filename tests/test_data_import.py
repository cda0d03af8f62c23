"""`import alexnet_jax.data` must not import TensorFlow: the GPU machines have none."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(code: str) -> str:
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 0, result.stderr
  return result.stdout


def test_importing_the_data_package_and_preprocess_leaves_tensorflow_unloaded():
  out = run_python(
      "import sys\n"
      "import alexnet_jax.data as data, alexnet_jax.preprocess\n"
      "from alexnet_jax import configlib\n"
      "info = data.dataset_info(configlib.base_config())\n"  # digits: numpy and scikit-learn only
      "data.num_eval_batches(configlib.base_config(), info, shard_count=1)\n"
      "loaded = sorted(m for m in sys.modules if m.startswith('tensorflow'))\n"
      "print(info.num_examples['train'], loaded)\n")
  assert out.split() == ["1437", "[]"]


def test_building_a_pipeline_hides_gpus_from_tensorflow():
  out = run_python(
      "import alexnet_jax.data as data\n"
      "from alexnet_jax import configlib\n"
      "cfg = configlib.base_config(); cfg.data.resize_size = 36; cfg.data.crop_size = 32\n"
      "next(data.train_iterator(cfg, shard_index=0, shard_count=1))\n"
      "import tensorflow as tf\n"
      "print(tf.config.get_visible_devices('GPU'))\n")
  assert out.strip().endswith("[]")
