"""The built-in problems: splits, shapes, exact answers, no network."""

import os
import socket

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import hippojax
from hippojax import problems

FAST = ["ridge-diabetes", "logreg-breast-cancer", "mlp-digits",
        "hyper-cleaning-digits"]


def test_names_are_fixed_and_unknown_lists_choices():
  assert problems.names() == ["ridge-diabetes", "logreg-breast-cancer",
                              "mlp-digits", "hyper-cleaning-digits",
                              "mlp-mnist1d", "mlp-mnist1d-10k",
                              "hyper-cleaning-mnist1d", "logreg-ijcnn1-like"]
  with pytest.raises(ValueError, match="choose one of ridge-diabetes"):
    problems.get("ridge-boston")


def test_problems_are_cached():
  assert problems.get("ridge-diabetes") is problems.get("ridge-diabetes")
  p = problems.ridge_diabetes()
  assert problems.get(p) is p


@pytest.mark.parametrize("name, num_hparams", [
    ("ridge-diabetes", 10), ("logreg-breast-cancer", 30), ("mlp-digits", 3),
    ("hyper-cleaning-digits", 1000)])
def test_problem_structure(name, num_hparams):
  p = problems.get(name)
  assert p.num_hparams == num_hparams
  n_train = p.train_data[0].shape[0]
  assert p.val_data[0].shape[1] == p.train_data[0].shape[1]
  assert p.test_data[0].shape[1] == p.train_data[0].shape[1]
  assert n_train > 0 and p.val_data[0].shape[0] > 0
  assert p.train_data[0].dtype == jnp.zeros(()).dtype
  h = p.as_hparams(p.space.default())
  params = p.init_params(jax.random.key(0))
  out = jax.eval_shape(p.train_step, params, h, p.train_data)
  assert jax.tree.structure(out) == jax.tree.structure(params)
  assert jax.eval_shape(p.val_loss, params, h, p.val_data).shape == ()
  for q in p.space:  # defaults lie inside the bounds
    assert np.all((q.default() >= q.low) & (q.default() <= q.high))


def test_as_hparams_checks_keys_and_shapes():
  p = problems.get("ridge-diabetes")
  with pytest.raises(ValueError, match="missing 'ridge'"):
    p.as_hparams({"l2": 1.0})
  with pytest.raises(ValueError, match=r"shape \(3,\), expected \(10,\)"):
    p.as_hparams({"ridge": np.ones(3)})
  assert p.as_hparams({"ridge": 0.1})["ridge"].shape == (10,)


def test_ridge_training_reaches_the_closed_form():
  p = problems.get("ridge-diabetes")
  h = p.as_hparams({"ridge": np.geomspace(1e-3, 1.0, 10)})
  trained = p.train(h)
  exact = p.exact_params(h, p.train_data)
  np.testing.assert_allclose(trained, exact, rtol=1e-6, atol=1e-8)


@pytest.mark.slow
def test_ridge_exact_hypergradient_matches_finite_differences_and_hoag():
  p = problems.get("ridge-diabetes")
  h = p.as_hparams({"ridge": np.geomspace(1e-3, 1.0, 10)})
  exact = p.exact_hypergradient(h)

  def objective(r):
    hh = {"ridge": r}
    return p.val_loss(p.exact_params(hh, p.train_data), hh, p.val_data)

  check_grads(objective, (h["ridge"],), order=1, modes=["rev"], atol=1e-6,
              rtol=1e-5)
  w = p.exact_params(h, p.train_data)
  hg = hippojax.hoag(p.train_step, p.val_loss, h, w, p.train_data,
                     p.val_data, tol=1e-12, maxiter=50)
  np.testing.assert_allclose(hg.grad["ridge"], exact["ridge"], rtol=1e-6,
                             atol=1e-10)
  assert problems.get("logreg-breast-cancer").exact_hypergradient(
      problems.get("logreg-breast-cancer").space.default()) is None


def test_scalar_ridge_variant():
  p = problems.ridge_diabetes(per_feature=False)
  assert p.num_hparams == 1 and p.space.params[0].shape == ()
  assert problems.get("ridge-diabetes-scalar") is p
  assert problems.logreg_digits().num_hparams == 640


def test_hyper_cleaning_oracle_weights_beat_noisy_labels():
  p = problems.get("hyper-cleaning-digits")
  corrupted = p.extras["corrupted"]
  assert corrupted.shape == (1000,)
  assert 0.35 < corrupted.mean() < 0.45
  noisy = p.evaluate({"weight": np.ones(1000)})
  oracle = p.evaluate({"weight": np.where(corrupted, 0.0, 1.0)})
  assert oracle["test_metric"] > noisy["test_metric"] + 0.05


def test_evaluate_and_validate_agree():
  p = problems.get("logreg-breast-cancer")
  h = p.space.default()
  ev = p.evaluate(h, num_steps=50)
  assert ev["val_loss"] == pytest.approx(p.validate(h, num_steps=50))
  assert 0.5 < ev["test_metric"] <= 1.0


@pytest.mark.slow
def test_mnist1d_is_generated_locally_without_network(tmp_path, monkeypatch):
  """MNIST-1D is built by make_dataset: no download, nothing written."""

  def no_network(*args, **kwargs):
    raise AssertionError("the network was touched")

  monkeypatch.setattr(socket.socket, "connect", no_network)
  monkeypatch.setattr(socket, "create_connection", no_network)
  import requests  # mnist1d's download path goes through requests.get
  monkeypatch.setattr(requests, "get", no_network)
  monkeypatch.chdir(tmp_path)
  from hippojax._src import problems as problems_src
  problems_src._mnist1d_arrays.cache_clear()
  state = np.random.get_state()[1].copy()
  x, y, xe, _ = problems_src._mnist1d_arrays()
  assert x.shape == (4000, 40) and xe.shape == (1000, 40)
  assert set(np.unique(y)) == set(range(10))
  assert os.listdir(tmp_path) == []
  # make_dataset reseeds NumPy's global generator; it is restored.
  np.testing.assert_array_equal(np.random.get_state()[1], state)
  p = problems.get("mlp-mnist1d")
  assert p.num_hparams == 3 and p.train_data[0].shape == (3000, 40)
  ev = p.evaluate(p.space.default(), num_steps=100)
  assert np.isfinite(ev["val_loss"]) and ev["test_metric"] > 0.2
