"""Bad inputs and faults a user would hit: each is refused with exit status 2 (130 for a second
Ctrl-C), exactly one line on stderr starting with "error: " and no traceback, and every file
already in the work directory is byte-for-byte unchanged.

One small run is trained once for the module (configs/test.py, 4 steps, in this process) and
shared; every case runs `cli.main` in this process except where a real process is needed
(signals). Most cases fail before anything compiles.
"""

import contextlib
import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess

import pytest

import runs
from alexnet_jax import checkpoint, cli, configlib, workdir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_CONFIG = os.path.join(REPO, "configs", "test.py")
# 44 steps per epoch: 4 steps, evaluated (and saved) at step 4.
SHORT = ("--config.num_epochs=0.1", "--config.eval_every_epochs=0.1")


def snapshot(directory) -> dict[str, str]:
  """{relative path: sha256} of every file under `directory`."""
  out = {}
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
  return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A finished 4-step run (checkpoints at steps 2 and 4) and its parameters exported next to it
  (not inside it)."""
  root = tmp_path_factory.mktemp("fuzz")
  run = str(root / "run")
  assert cli.main(["train", "--config", TEST_CONFIG, "--workdir", run, *SHORT,
                   "--config.checkpoint_every_steps=2"]) == 0
  params = str(root / "params.safetensors")
  assert cli.main(["export", "--workdir", run, "--out", params]) == 0
  return {"root": root, "run": run, "params": params}


def refused(capsys, argv, *, directories=(), status=2, needle=""):
  """Run the command; assert the status, one error line, no traceback, nothing changed."""
  before = {d: snapshot(d) for d in directories}
  capsys.readouterr()
  try:
    rc = cli.main(list(argv))
  except SystemExit as e:  # argparse's errors exit from inside parse_args
    rc = e.code
  err = capsys.readouterr().err
  lines = [line for line in err.splitlines() if line.strip()]
  assert rc == status, err
  assert "Traceback" not in err, err
  assert len(lines) == 1 and lines[0].startswith("error: "), err
  assert needle in lines[0], lines[0]
  for d in directories:
    assert snapshot(d) == before[d], f"{d} changed"
  return lines[0]


def train_argv(run, *extra):
  return ["train", "--config", TEST_CONFIG, "--workdir", run, *SHORT, *extra]


# --- config files that do not load ------------------------------------------------------------

CONFIG_FILES = {
    "syntax_error": ("def get_config(:\n  pass\n", "", "syntax error at line 1"),
    "no_get_config": ("X = 1\n", "", "has no get_config() function"),
    "arg_not_taken": ("from alexnet_jax.configlib import base_config\n"
                      "def get_config():\n  return base_config()\n", ":fast",
                      "takes no argument; drop ':fast'"),
    "arg_needed": ("from alexnet_jax.configlib import base_config\n"
                   "def get_config(arg):\n  return base_config()\n", "", "needs an argument"),
    "name_error": ("import os\nc = undefined_name\n", "", "failed to load (line 2): NameError"),
    "get_config_raises": ("def get_config():\n  return 1 / 0\n", "",
                          "get_config() failed (line 2): ZeroDivisionError"),
    "not_a_configdict": ("def get_config():\n  return {'seed': 1}\n", "",
                         "returned a dict, not an ml_collections.ConfigDict"),
    "missing_fields": ("import ml_collections\ndef get_config():\n"
                       "  return ml_collections.ConfigDict({'seed': 1})\n", "",
                       "lacks config.batch_size"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_FILES))
def test_config_file_that_does_not_load(case, trained, tmp_path, capsys):
  text, arg, needle = CONFIG_FILES[case]
  path = tmp_path / f"{case}.py"
  path.write_text(text)
  refused(capsys, ["train", "--config", f"{path}{arg}", "--workdir", trained["run"]],
          directories=[trained["run"]], needle=needle)


def test_config_that_does_not_exist_or_is_a_directory(trained, tmp_path, capsys):
  refused(capsys, ["train", "--config", "no_such_config", "--workdir", trained["run"]],
          directories=[trained["run"]], needle="no such config")
  refused(capsys, ["train", "--config", str(tmp_path), "--workdir", trained["run"]],
          directories=[trained["run"]], needle="no such config")


# --- overrides and values that cannot work, on an existing run ---------------------------------

BAD_OVERRIDES = {
    "no_equals": (["--config.seed"], "has no '='"),
    "unknown_field": (["--config.model.nope=1"], "no such field"),
    "unknown_section": (["--config.nope.x=1"], "'nope' is not a config section"),
    "bad_int": (["--config.batch_size=many"], "config.batch_size=many"),
    "bad_bool": (["--config.data.flip=maybe"], "expected true or false"),
    "negative_rate_and_epochs": (["--config.optim.learning_rate=-1", "--config.num_epochs=-5"],
                                 "learning_rate=-1.0: must be >= 0"),
    "unknown_model": (["--config.model.name=bogus"], "config.model.name='bogus' is not a model"),
    "unknown_dataset": (["--config.data.name=no_such_dataset_xyz"], "no_such_dataset_xyz"),
    "crop_larger_than_resize": (["--config.data.crop_size=40"], "is larger than config.data."),
    "batch_not_divisible": (["--config.batch_size=12"], "not divisible by the 8 devices"),
    "zero_batch": (["--config.batch_size=0"], "config.batch_size=0: must be >= 1"),
    "momentum": (["--config.optim.momentum=1.5"], "config.optim.momentum=1.5"),
    "class_count": (["--config.model.num_classes=3"], "has 10 classes"),
    "strategy": (["--config.sharding.strategy=pipeline"], "choose one of data"),
    "mesh": (["--config.sharding.mesh=4by2"], "'4by2'"),
    "norm": (["--config.model.norm=bogus"], "config.model.norm='bogus'"),
    "dropout": (["--config.model.dropout=1.0"], "config.model.dropout=1.0"),
    "width": (["--config.model.width=0"], "config.model.width=0.0: must be > 0"),
    "keep": (["--config.keep_checkpoints=0"], "config.keep_checkpoints=0"),
    "log_every": (["--config.log_every_steps=0"], "config.log_every_steps=0"),
    "paper_at_224": (["--config.model.name=paper", "--config.data.resize_size=256",
                      "--config.data.crop_size=224"], "allow_other_input_size"),
    "optimizer": (["--config.optim.name=adam"], "config.optim.name='adam'"),
}


@pytest.mark.parametrize("case", sorted(BAD_OVERRIDES))
def test_bad_override_on_an_existing_run_changes_nothing(case, trained, capsys):
  overrides, needle = BAD_OVERRIDES[case]
  refused(capsys, train_argv(trained["run"], *overrides), directories=[trained["run"]],
          needle=needle)


def test_a_rejected_config_leaves_no_directory_behind(tmp_path, capsys):
  """The typo of the issue: nothing is created, so the corrected command then works."""
  new = tmp_path / "new"
  refused(capsys, train_argv(str(new), "--config.model.name=bogus"), needle="bogus")
  assert not new.exists()


# --- work directories that cannot be used -----------------------------------------------------


@pytest.mark.parametrize("field,value,needle", [
    ("model.width", "0.5", "config.model.width (0.25 there, 0.5 now)"),
    ("seed", "3", "config.seed (0 there, 3 now)"),
    ("data.crop_size", "30", "config.data.crop_size (32 there, 30 now)"),
])
def test_a_work_directory_of_another_run_names_the_field(field, value, needle, trained, capsys):
  line = refused(capsys, train_argv(trained["run"], f"--config.{field}={value}"),
                 directories=[trained["run"]], needle=needle)
  assert "lrn_alpha" not in line  # not the whole model section


def test_a_work_directory_that_is_a_file(trained, capsys):
  path = trained["root"] / "a_file"
  path.write_text("not a directory")
  refused(capsys, train_argv(str(path)), directories=[trained["root"]], needle="is a file")
  refused(capsys, train_argv(str(path / "sub")), directories=[trained["root"]],
          needle="a part of the path is a file")


@pytest.mark.parametrize("content,needle", [
    ('{"model": {"name": "sm', "config.json is damaged"),
    ("[1, 2]", "config.json is damaged"),
    ('{"model": 5}', "config.json is damaged"),
])
def test_a_damaged_config_json(content, needle, trained, tmp_path, capsys):
  run = tmp_path / "run"
  shutil.copytree(trained["run"], run)
  (run / "config.json").write_text(content)
  refused(capsys, train_argv(str(run)), directories=[run], needle=needle)


def test_a_work_directory_in_use(trained, capsys):
  lock = workdir.Lock(trained["run"], command="python launch.py train --workdir elsewhere")
  try:
    # Without the flock this command would resume the finished run (and rewrite its files).
    refused(capsys, train_argv(trained["run"]), directories=[trained["run"]],
            needle=f"is in use by pid {os.getpid()} on host ")
  finally:
    lock.release()


@contextlib.contextmanager
def mounted(path, options):
  os.makedirs(path, exist_ok=True)
  if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                    capture_output=True).returncode != 0:
    pytest.skip("cannot mount a tmpfs here (needs root)")
  try:
    yield path
  finally:
    subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_read_only_work_directory(tmp_path, capsys):
  with mounted(tmp_path / "ro", "size=1m,ro") as ro:
    refused(capsys, train_argv(str(ro / "run")), needle="is not writable (Read-only file system)")
    refused(capsys, train_argv(str(ro)), needle="is on a read-only filesystem")


# --- the command line -------------------------------------------------------------------------


@pytest.mark.parametrize("argv,needle", [
    (["bogus"], "invalid choice: 'bogus'"),
    (["train", "--bogus"], "unrecognised argument '--bogus'"),
    (["evaluate", "--params", "x", "--batch-size", "0"], "--batch-size: 0 must be at least 1"),
    (["evaluate", "--params", "x", "--batch-size", "-8"], "--batch-size: -8 must be at least 1"),
    (["evaluate", "--params", "x", "--batch-size", "ten"], "'ten' is not a whole number"),
    (["predict", "--params", "x", "--top", "0", "a.jpg"], "--top: 0 must be at least 1"),
    (["export", "--out", "x.safetensors"], "one of the arguments --workdir --params is required"),
])
def test_bad_arguments_are_one_line(argv, needle, capsys):
  refused(capsys, argv, needle=needle)


# --- parameter files and exports --------------------------------------------------------------


def test_parameter_files_that_cannot_be_read(trained, tmp_path, capsys):
  digits = ["--config", TEST_CONFIG]
  truncated = tmp_path / "truncated.safetensors"
  truncated.write_bytes(open(trained["params"], "rb").read()[:1000])
  text = tmp_path / "text.safetensors"
  text.write_text("hello")
  for path, needle in ((tmp_path / "missing.safetensors", "no such file"),
                       (truncated, str(truncated)), (text, str(text))):
    refused(capsys, ["evaluate", "--params", str(path), *digits], directories=[trained["run"]],
            needle=needle)


def test_a_malicious_pth_is_refused_without_advice_to_run_it(tmp_path, capsys):
  torch = pytest.importorskip("torch")
  evil = tmp_path / "evil.pth"
  marker = tmp_path / "ran"
  torch.save({"features.0.weight": torch.zeros(1), "x": _Evil(str(marker))}, str(evil))
  line = refused(capsys, ["predict", "--params", str(evil), "a.jpg"],
                 needle="holds pickled Python objects besides tensors")
  assert "weights_only=False" not in line and not marker.exists()


class _Evil:
  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return (open, (self.path, "w"))


def test_a_torchvision_file_with_a_crop_too_small(tmp_path, capsys):
  torch = pytest.importorskip("torch")
  pth = tmp_path / "tv.pth"
  # The layout is recognised by these two names; the crop is checked before any shape.
  torch.save({"features.0.weight": torch.zeros(64, 3, 11, 11),
              "classifier.6.weight": torch.zeros(10, 4096)}, str(pth))
  refused(capsys, ["evaluate", "--params", str(pth), "--config", TEST_CONFIG],
          needle="config.data.crop_size=32 is too small for model 'owt'")


@pytest.mark.parametrize("extra,needle", [
    (["--checkpoint", "999"], "has no checkpoint at step 999"),
    (["--checkpoint", "newest"], "write latest, best or a step number"),
    (["--layout", "torchvision"], "fits only variant 'owt'"),
    (["--config.seed=1"], "export takes no --config overrides"),
])
def test_export_refusals(extra, needle, trained, capsys):
  out = trained["root"] / "out.safetensors"
  refused(capsys, ["export", "--workdir", trained["run"], "--out", str(out), *extra],
          directories=[trained["run"]], needle=needle)
  assert not out.exists()


def test_export_over_an_existing_file_or_into_a_file(trained, capsys):
  refused(capsys, ["export", "--workdir", trained["run"], "--out", trained["params"]],
          directories=[trained["root"]], needle="exists; pass --overwrite")
  blocker = trained["root"] / "blocker"
  blocker.write_text("x")
  refused(capsys, ["export", "--workdir", trained["run"], "--out", str(blocker / "p.safetensors")],
          directories=[trained["run"]], needle="pass another --out")


def test_export_of_a_directory_that_is_not_a_run(tmp_path, capsys):
  refused(capsys, ["export", "--workdir", str(tmp_path), "--out", str(tmp_path / "o.safetensors")],
          directories=[tmp_path], needle="is not a training work directory")


def test_export_on_a_full_disk(trained, tmp_path, capsys, monkeypatch):
  from alexnet_jax import safetensors_io
  real_open = open

  def full_open(path, mode="r", *a, **k):
    f = real_open(path, mode, *a, **k)
    if "w" in mode and ".tmp-" in str(path):
      class Full:  # the temporary file fills the disk at its first write
        def __enter__(self):
          return self

        def __exit__(self, *exc):
          f.close()

        def write(self, data):
          raise OSError(errno.ENOSPC, "No space left on device")
      return Full()
    return f

  monkeypatch.setattr(safetensors_io, "open", full_open, raising=False)
  out = tmp_path / "p.safetensors"
  refused(capsys, ["export", "--workdir", trained["run"], "--out", str(out)],
          directories=[trained["run"]], needle=f"no space left on the device writing {out} "
          "(needs about ")
  assert os.listdir(tmp_path) == []  # nothing half-written left behind


def test_predict_of_an_unreadable_image(trained, tmp_path, capsys):
  bad = tmp_path / "bad.jpg"
  bad.write_bytes(b"\xff\xd8 not really a jpeg")
  refused(capsys, ["predict", "--params", trained["params"], str(bad)], status=1,
          needle=f"{bad}: cannot read image")


def test_evaluate_out_into_a_file(trained, tmp_path, capsys):
  blocker = tmp_path / "blocker"
  blocker.write_text("x")
  refused(capsys, ["evaluate", "--params", trained["params"], "--config", TEST_CONFIG, "--out",
                   str(blocker / "r.json")], needle="pass another --out")


# --- faults while training --------------------------------------------------------------------


def test_a_full_disk_at_a_checkpoint_keeps_the_previous_one(trained, tmp_path, capsys,
                                                            monkeypatch):
  run = tmp_path / "run"
  shutil.copytree(trained["run"], run)
  before = snapshot(run / "checkpoints")
  monkeypatch.setattr(checkpoint, "_free_bytes", lambda directory: 1000)
  line = refused(capsys, train_argv(str(run), "--config.num_epochs=0.2",
                                    "--config.checkpoint_every_steps=2"),
                 needle=f"no space left on the device writing checkpoint {run}/checkpoints/6 "
                        "(needs about ")
  assert f"training resumes from {run}/checkpoints/4, which is intact" in line
  assert snapshot(run / "checkpoints") == before  # the previous checkpoint, byte for byte


def tmpfs_bytes(directory) -> int:
  """What the files under `directory` take on a tmpfs, which stores whole pages."""
  page = os.sysconf("SC_PAGE_SIZE")
  return sum(-(-os.path.getsize(os.path.join(r, f)) // page) * page
             for r, _, fs in os.walk(directory) for f in fs)


def test_a_disk_that_fills_during_a_checkpoint_write(trained, tmp_path, capsys, monkeypatch):
  """A real full filesystem: Orbax's write fails midway (its free-space check is bypassed)."""
  used = tmpfs_bytes(trained["run"])
  # Room for the copy and half a checkpoint more: the next checkpoint's write runs out midway.
  half_a_checkpoint = tmpfs_bytes(os.path.join(trained["run"], "checkpoints", "4")) // 2
  with mounted(tmp_path / "small", f"size={used + half_a_checkpoint}") as mount:
    run = mount / "run"
    shutil.copytree(trained["run"], run)
    before = snapshot(run / "checkpoints")
    monkeypatch.setattr(checkpoint, "_free_bytes", lambda directory: None)
    line = refused(capsys, train_argv(str(run), "--config.num_epochs=0.2",
                                      "--config.checkpoint_every_steps=2",
                                      "--config.log_every_steps=100"),
                   needle=f"no space left on the device writing checkpoint {run}/checkpoints/6")
    assert f"training resumes from {run}/checkpoints/4, which is intact" in line
    after = snapshot(run / "checkpoints")
    latest = lambda files: {k: v for k, v in files.items() if k.startswith("4/")}
    assert latest(before) and latest(after) == latest(before)


def test_a_second_ctrl_c_stops_at_once_in_one_line(trained, tmp_path):
  """A real process: Ctrl-C twice, as a user at a terminal would."""
  run = str(tmp_path / "run")
  shutil.copytree(trained["run"], run)
  before = snapshot(os.path.join(run, "checkpoints"))
  log_path = str(tmp_path / "log")
  command = [*runs.train_command(run), "--config.num_epochs=5", "--config.log_every_steps=1",
             "--config.checkpoint_every_steps=0", "--config.eval_every_epochs=5"]
  command = [c for c in command if not c.startswith(("--config.checkpoint_every_steps=5",
                                                     "--config.num_epochs=0.55",
                                                     "--config.eval_every_epochs=0.1818"))]
  # 8 virtual devices in-process here; the subprocess has 2: the batch of 32 splits either way.
  with open(log_path, "w") as log:
    # Ctrl-C as at a terminal: a test run started in the background (`pytest &` in a script)
    # hands its children SIGINT ignored, which `train` rightly leaves alone.
    # PYTHONFAULTHANDLER: a run that hangs instead of stopping shows where, every thread of it.
    p = subprocess.Popen(command, cwd=REPO, env=dict(runs.env(), PYTHONFAULTHANDLER="1"),
                         stdout=log, stderr=subprocess.STDOUT,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
  runs.wait_for(lambda: runs.last_train_step(run) >= 6, p, timeout=180)
  p.send_signal(signal.SIGINT)
  # The second Ctrl-C once the first is handled: two signals before the handler runs would
  # arrive as one (Python runs a signal's handler once for all that are pending).
  runs.wait_for(lambda: "received SIGINT" in open(log_path).read(), p, timeout=60)
  p.send_signal(signal.SIGINT)
  try:
    p.wait(timeout=180)
  except subprocess.TimeoutExpired:
    p.send_signal(signal.SIGABRT)  # the fault handler prints every thread's stack, then it ends
    p.wait(timeout=60)
    pytest.fail("still running 180 s after the second Ctrl-C; its threads:\n"
                + open(log_path).read()[-6000:])
  output = open(log_path).read()
  assert p.returncode == 130, output[-2000:]
  assert "Traceback" not in output, output[-4000:]
  errors = [line for line in output.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and "stopped at once by a second Ctrl-C" in errors[0], output[-2000:]
  assert "To resume from it, run the same command again" in errors[0]
  assert snapshot(os.path.join(run, "checkpoints")) == before


def test_metrics_after_a_resume_hold_one_history(trained, tmp_path):
  """A killed run's records past its checkpoint and a cut-off line are gone after a resume."""
  run = tmp_path / "run"
  shutil.copytree(trained["run"], run)
  with open(run / "metrics.jsonl", "a") as f:  # as if killed after logging step 6, mid-line
    f.write(json.dumps({"step": 5, "split": "train", "loss": 9.0}) + "\n")
    f.write(json.dumps({"step": 6, "split": "train", "loss": 9.0}) + "\n")
    f.write('{"step": 7, "split": "tr')
  assert cli.main(train_argv(str(run), "--config.num_epochs=0.15",
                             "--config.log_every_steps=1")) == 0
  steps = [r["step"] for r in runs.records(str(run)) if r["split"] == "train"]
  assert steps == sorted(set(steps)) and steps[-3:] == [5, 6, 7]
  assert all(r.get("loss") != 9.0 for r in runs.records(str(run)))
  lines = open(run / "metrics.jsonl").read().splitlines()
  assert all(json.loads(line) for line in lines)  # every line parses: nothing appended to a stub


def test_config_json_is_rewritten_only_by_an_accepted_command(trained, tmp_path, capsys):
  run = tmp_path / "run"
  shutil.copytree(trained["run"], run)
  refused(capsys, train_argv(str(run), "--config.num_epochs=-1"), directories=[run])
  assert configlib.from_json((run / "config.json").read_text()).num_epochs == 0.1
