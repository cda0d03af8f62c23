"""The two figures of issue 15: neighbours.png's title fits and its query labels are not drawn
in the colour that means "wrong"; compare.png says on the chart when its step times are CPU's."""

import matplotlib.colors
import numpy as np
import pytest
from matplotlib.figure import Figure

from alexnet_jax import compare
from alexnet_jax.experiments import neighbours, plotting


@pytest.fixture
def saved_figures(monkeypatch):
  figures = []
  real = Figure.savefig

  def spy(self, *args, **kwargs):
    figures.append(self)
    return real(self, *args, **kwargs)

  monkeypatch.setattr(Figure, "savefig", spy)
  return figures


def test_neighbours_title_fits_and_queries_are_not_red(tmp_path, saved_figures):
  nq, k = 3, 6
  rng = np.random.default_rng(0)
  result = {"query_images": rng.integers(0, 255, (nq, 8, 8, 3), np.uint8),
            "neighbour_images": rng.integers(0, 255, (nq, k, 8, 8, 3), np.uint8),
            "query_labels": [1, 2, 3], "neighbour_labels": [[1] * k, [2] * k, [3, 0] + [3] * 4],
            "distances": rng.random((nq, k)).tolist(), "db_split": "train",
            "same_label_fraction": 17 / 18}
  title = ("small at step 660: validation queries (framed) and their nearest train images by "
           "fc7 distance; 94% share the query's label")
  neighbours.draw(result, str(tmp_path / "n.png"), title=title)
  fig = saved_figures[-1]
  renderer = fig.canvas.get_renderer()
  box = fig._suptitle.get_window_extent(renderer)
  assert 0 <= box.x0 and box.x1 <= fig.bbox.x1  # the whole title inside the figure
  axes = np.array(fig.axes).reshape(nq, k + 1)
  red = matplotlib.colors.to_rgba(neighbours.WRONG_COLOUR)
  for r in range(nq):
    assert matplotlib.colors.to_rgba(axes[r, 0].title.get_color()) != red
  assert matplotlib.colors.to_rgba(axes[2, 2].title.get_color()) == red  # label 0 for query 3
  assert matplotlib.colors.to_rgba(axes[2, 1].title.get_color()) != red


@pytest.mark.parametrize("cpu", [True, False])
def test_compare_chart_carries_the_cpu_caveat(cpu, tmp_path, saved_figures):
  results = [compare.Result(s, "4x2", 8, 32, 1.0, [10.0, 12.0], 2**20, 2**20, None, {}, None)
             for s in ("data", "fsdp")]
  compare.plot(results, str(tmp_path / "c.png"), "title", cpu=cpu)
  texts = [t.get_text() for t in saved_figures[-1].texts]
  assert (compare.CPU_CAVEAT in texts) == cpu
  assert ("not a speed" in saved_figures[-1].axes[0].get_title()) == cpu


def test_plotting_save_is_atomic(tmp_path):
  fig = plotting.new_figure(1, 1)
  plotting.save(fig, str(tmp_path / "a.png"))
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]
