"""The Flax NNX example (examples/nnx_digits.py) runs and learns."""

import importlib.util
import pathlib

import numpy as np
import pytest

pytest.importorskip("flax")

_PATH = (pathlib.Path(__file__).resolve().parents[1] / "examples" /
         "nnx_digits.py")


@pytest.fixture(scope="module")
def example():
  spec = importlib.util.spec_from_file_location("nnx_digits", _PATH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.slow
def test_validation_loss_drops_and_nnx_optimizer_path_agrees(example):
  model, hparams, history, accuracy = example.tune(
      outer_steps=8, inner_steps=5, batch_size=64)
  assert len(history) == 8 and np.all(np.isfinite(history))
  assert history[-1] < history[0] - 0.05
  # Too small a learning rate to start with: the hypergradient raises it.
  assert float(hparams["log_lr"]) > -4.0
  assert set(hparams["log_wd"]) == {"hidden", "out"}
  assert accuracy > 0.1  # the tuned weights were written back into the model
  assert model.out.kernel.shape == (64, 10)
  # main() returns the history; the nnx.Optimizer path gives the same one.
  via_nnx = example.main(outer_steps=3, inner_steps=5, batch_size=64,
                         nnx_optimizer=True, verbose=False)
  np.testing.assert_allclose(via_nnx, history[:3], rtol=1e-4)
