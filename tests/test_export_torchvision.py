"""torchvision interchange for the owt variant, checked against PyTorch itself.

torchvision's AlexNet is the PyTorch peer's (benchmarks/torch_alexnet.py), built by hand with
torch.nn (there is no torchvision CPU build on these machines): the same module tree, so the
same state_dict names (features.0, .3, .6, .8, .10; classifier.1, .4, .6) and the same
computation.
"""

import ast
import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import safetensors.torch  # noqa: E402

from alexnet_jax import export, predict, preprocess, program  # noqa: E402
from alexnet_jax import safetensors_io  # noqa: E402

import jax  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import torch_alexnet  # noqa: E402


def random_torch_model(num_classes=1000, seed=0):
  """Random weights scaled (He) so that the logits are of order 1, not vanishing."""
  torch.manual_seed(seed)
  model = torch_alexnet.alexnet(num_classes).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      fan_in = p[0].numel() if name.endswith("weight") else 1
      p.normal_(0.0, (2.0 / fan_in) ** 0.5 if name.endswith("weight") else 0.1)
  return model


@pytest.fixture(scope="module")
def torch_model():
  return random_torch_model()


@pytest.fixture(scope="module")
def torch_files(torch_model, tmp_path_factory):
  """The model's state_dict as torchvision users hold it: a .pth, and safetensors."""
  directory = tmp_path_factory.mktemp("torchvision")
  files = {"pth": str(directory / "alexnet.pth"), "safetensors": str(directory / "alexnet.safetensors")}
  torch.save(torch_model.state_dict(), files["pth"])
  safetensors.torch.save_file(torch_model.state_dict(), files["safetensors"])
  return files


def torch_logits(model, images_uint8, mean, std):
  x = (images_uint8.astype(np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(
      std, np.float32)
  with torch.no_grad():
    return model(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()


_LOGITS_FNS = {}  # one compiled function per model shape, shared by the tests


def jax_logits(loaded, images_uint8):
  cfg = loaded.cfg
  key = (cfg.model.name, cfg.model.num_classes, cfg.data.crop_size)
  if key not in _LOGITS_FNS:
    fns = program.model_fns(cfg)
    _LOGITS_FNS[key] = jax.jit(lambda p, s, x: fns.apply(p, s, x, train=False)[0])
  x = preprocess.normalize(images_uint8, None, cfg.data.mean, cfg.data.std)
  return np.asarray(_LOGITS_FNS[key](loaded.params, loaded.model_state, x))


@pytest.fixture(scope="module")
def loaded_pth(torch_files):
  return export.load(torch_files["pth"])


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_torchvision_weights_give_torchvisions_logits(torch_model, torch_files, loaded_pth, fmt):
  loaded = loaded_pth if fmt == "pth" else export.load(torch_files[fmt])
  assert loaded.cfg.model.name == "owt" and loaded.num_classes == 1000
  assert loaded.class_names[0] == "tench, Tinca tinca"  # ImageNet's names for 1000 classes
  images = np.random.default_rng(1).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
  want = torch_logits(torch_model, images, loaded.cfg.data.mean, loaded.cfg.data.std)
  got = jax_logits(loaded, images)
  assert np.abs(want).max() > 1.0  # meaningful logits, not all near zero
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
  assert np.array_equal(got.argmax(-1), want.argmax(-1))


@pytest.mark.long(seconds=12)
def test_torchvision_to_this_layout_and_back_is_exact_and_loads_in_pytorch(torch_model, torch_files,
                                                                          tmp_path):
  """.pth -> this project's layout (params/conv1/kernel, ...) -> torchvision's layout: the
  state_dict comes back bit for bit and loads into the PyTorch model with safetensors.torch."""
  mine = str(tmp_path / "mine.safetensors")
  export.export(params=torch_files["pth"], out=mine)
  assert "params/fc6/kernel" in safetensors_io.read_header(mine)[0]
  out = str(tmp_path / "for_torch.safetensors")
  export.export(params=mine, out=out, layout="torchvision")
  fresh = torch_alexnet.alexnet()
  fresh.load_state_dict(safetensors.torch.load_file(out))
  for (name, a), b in zip(torch_model.state_dict().items(), fresh.state_dict().values()):
    assert torch.equal(a, b), name


def test_evaluate_reads_torchvision_weights_directly(tmp_path):
  """`evaluate --params alexnet.pth`: the error it reports is PyTorch's own on the same images."""
  from alexnet_jax import data, evaluate
  from configs import test as test_config

  model = random_torch_model(num_classes=10, seed=4)
  path = str(tmp_path / "ten.pth")
  torch.save(model.state_dict(), path)
  cfg = test_config.get_config()  # digits; owt's adaptive pooling takes 63 px inputs
  cfg.model.name, cfg.model.width = "owt", 1.0
  cfg.data.resize_size, cfg.data.crop_size = 72, 63
  got = evaluate.evaluate(cfg, [path], batch_size=120, devices=jax.devices()[:1])
  wrong, count = 0, 0
  for batch in data.eval_iterator(cfg, batch_size=120, shard_index=0, shard_count=1):
    logits = torch_logits(model, batch["image"][batch["mask"]], cfg.data.mean, cfg.data.std)
    wrong += int((logits.argmax(-1) != batch["label"][batch["mask"]]).sum())
    count += int(batch["mask"].sum())
  assert got["examples"] == count == 360
  assert round(got["models"][0]["top1_err"] * count) == wrong
  assert got["models"][0]["variant"] == "owt"


def test_torchvision_files_of_another_class_count_or_not_alexnet(tmp_path):
  ten = str(tmp_path / "ten.pth")
  torch.save(torch_alexnet.alexnet(10).state_dict(), ten)
  expect = export.torchvision_config(1000)
  with pytest.raises(export.ExportError) as e:
    export.load(ten, expect=expect)
  assert "tensor classifier.6.weight has shape (10, 4096) in the file but (1000, 4096)" in str(e.value)

  other = str(tmp_path / "other.pth")
  torch.save({"conv.weight": torch.zeros(3, 3)}, other)
  with pytest.raises(export.ExportError, match="not torchvision's AlexNet layout"):
    export.load(other)

  pickled = str(tmp_path / "pickled.pth")
  torch.save({"state_dict": torch_alexnet.alexnet(10).state_dict(), "note": object.__new__(Note)},
             pickled)
  with pytest.raises(export.ExportError, match="holds pickled Python objects besides tensors") as e:
    export.load(pickled)
  assert "weights_only=False" not in str(e.value)  # PyTorch's advice would run the file's code

  with pytest.raises(export.ExportError, match="torchvision's AlexNet layout fits only variant 'owt'"):
    small = str(tmp_path / "small.safetensors")
    model = export.LoadedModel(export.torchvision_config(10), {}, {}, (), None, "x")
    model.cfg.model.name = "small"
    export.save(model, small, layout="torchvision")


class Note:
  pass


def test_predict_on_torchvision_weights_names_imagenet_classes(loaded_pth, tmp_path):
  image = tmp_path / "photo.png"
  from PIL import Image
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), np.uint8)).save(image)
  [p] = predict.predict(loaded_pth, [str(image)])
  names = export.classnames.imagenet_names()[1]
  assert len(p.top) == 5 and all(name in names for name, _ in p.top)
  probs = [prob for _, prob in p.top]
  assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-6


def test_no_module_imports_torch_at_import_time():
  """PyTorch is read only where a .pth file is: never imported at module level."""
  package = os.path.join(os.path.dirname(os.path.dirname(__file__)), "alexnet_jax")
  for root, _, files in os.walk(package):
    for name in files:
      if not name.endswith(".py"):
        continue
      tree = ast.parse(open(os.path.join(root, name)).read())
      for node in tree.body:  # module-level statements only
        modules = []
        if isinstance(node, ast.Import):
          modules = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
          modules = [node.module or ""]
        assert not any(m == "torch" or m.startswith("torch.") for m in modules), (name, modules)
