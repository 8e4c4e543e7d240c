"""Search spaces: suggest_float validation and the bounded bijections."""

import jax
import jax.numpy as jnp
import numpy as np
import optuna
import pytest

import hippojax
from hippojax._src.space import SearchSpace, as_space


@pytest.mark.parametrize("low, high, log, match", [
    (1.0, 1.0, False, "low must be < high"),
    (2.0, 1.0, False, "low must be < high"),
    (0.0, 1.0, True, "log=True needs low > 0"),
    (-1.0, 1.0, True, "log=True needs low > 0"),
    (float("nan"), 1.0, False, "low must be finite"),
    (0.0, float("inf"), False, "high must be finite"),
])
def test_invalid_bounds_raise(low, high, log, match):
  with pytest.raises(ValueError, match=match):
    hippojax.suggest_float("x", low, high, log=log)


def test_invalid_arguments_raise():
  with pytest.raises(TypeError, match="low must be a real number"):
    hippojax.suggest_float("x", "0", 1.0)
  with pytest.raises(ValueError, match="shape must be a tuple of positive"):
    hippojax.suggest_float("x", 0.0, 1.0, shape=(3, 0))
  with pytest.raises(ValueError, match=r"must not contain '\['"):
    hippojax.suggest_float("x[0]", 0.0, 1.0)
  with pytest.raises(ValueError, match="init=2.0 is outside"):
    hippojax.suggest_float("x", 0.0, 1.0, init=2.0)
  with pytest.raises(ValueError, match="names must be unique"):
    SearchSpace((hippojax.suggest_float("a", 0.0, 1.0),
                 hippojax.suggest_float("a", 0.0, 2.0)))
  with pytest.raises(TypeError, match="suggest_float"):
    as_space([("a", 0.0, 1.0)])


def test_shape_and_names():
  p = hippojax.suggest_float("w", 1e-3, 1.0, log=True, shape=(2, 3))
  assert p.shape == (2, 3) and p.size == 6
  assert p.element_names == [f"w[{i}]" for i in range(6)]
  assert hippojax.suggest_float("s", 0.0, 1.0, shape=4).shape == (4,)
  assert hippojax.suggest_float("s", 0.0, 1.0).element_names == ["s"]


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_bijection_stays_in_bounds_and_inverts(log, dtype):
  p = hippojax.suggest_float("x", 1e-4, 1e2, log=log, shape=(7,))
  u = jnp.asarray([-1e4, -40.0, -3.0, 0.0, 2.5, 40.0, 1e4], dtype)
  v = p.constrain(u)
  assert v.dtype == dtype
  assert np.all(np.asarray(v) >= p.low * (1 - 1e-6))
  assert np.all(np.asarray(v) <= p.high * (1 + 1e-6))
  values = np.asarray([2e-4, 3e-4, 0.01, 1.0, 7.0, 50.0, 90.0])
  back = np.asarray(p.constrain(jnp.asarray(p.unconstrain(values), dtype)))
  rtol = 1e-4 if dtype == jnp.float32 else 1e-9
  np.testing.assert_allclose(back, values, rtol=rtol)
  # The bounds themselves map to finite u, a relative 1e-6 of the range
  # inside.
  ends = np.asarray([p.unconstrain(p.low), p.unconstrain(p.high)])
  assert np.all(np.isfinite(ends)) and np.all(np.abs(ends) < 14.0)


def test_log_scale_midpoint_default_and_gradient():
  p = hippojax.suggest_float("x", 1e-4, 1.0, log=True)
  np.testing.assert_allclose(p.default(), 1e-2)
  np.testing.assert_allclose(float(p.constrain(jnp.zeros(()))), 1e-2,
                             rtol=1e-6)
  # d v / d u = v · (log high − log low) · σ(u)(1 − σ(u)) at u = 0.
  g = jax.grad(lambda u: p.constrain(u))(jnp.zeros(()))
  np.testing.assert_allclose(float(g), 1e-2 * np.log(1e4) / 4, rtol=1e-5)
  # Far outside the clip range the gradient vanishes but stays finite.
  assert np.isfinite(float(jax.grad(lambda u: p.constrain(u))(1e6)))


def test_space_flatten_roundtrip_and_distributions():
  space = SearchSpace((hippojax.suggest_float("a", 0.0, 1.0),
                       hippojax.suggest_float("b", 1e-3, 1.0, log=True,
                                              shape=(2,))))
  values = {"a": 0.25, "b": np.asarray([0.01, 0.5])}
  flat = space.flatten(values)
  assert flat == {"a": 0.25, "b[0]": 0.01, "b[1]": 0.5}
  back = space.unflatten(flat)
  np.testing.assert_allclose(back["b"], values["b"])
  assert back["a"].shape == ()
  dists = space.distributions()
  assert dists["b[1]"] == optuna.distributions.FloatDistribution(
      1e-3, 1.0, log=True)
  assert space.size == 3 and space.names == ["a", "b"]
  # Values a hair outside the bounds (exp(log(high))) are clipped, so that
  # Optuna accepts them.
  assert space.flatten({"a": 1.0 + 1e-12, "b": [1e-3, 1.0]})["a"] == 1.0


def test_space_suggest_uses_optuna_distributions():
  space = SearchSpace((hippojax.suggest_float("lr", 1e-3, 1.0, log=True),
                       hippojax.suggest_float("w", -1.0, 1.0, shape=(3,))))
  study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
  trial = study.ask()
  values = space.suggest(trial)
  assert values["w"].shape == (3,)
  assert set(trial.params) == {"lr", "w[0]", "w[1]", "w[2]"}
  assert 1e-3 <= float(values["lr"]) <= 1.0


def test_unconstrain_default_dtype_follows_x64():
  space = SearchSpace((hippojax.suggest_float("a", 0.0, 1.0, shape=(2,)),))
  u = space.unconstrain(space.default())
  assert u["a"].dtype == jnp.zeros(()).dtype
  u32 = space.unconstrain(space.default(), jnp.float32)
  assert u32["a"].dtype == jnp.float32


def test_initial_points_differ_by_seed_and_stay_in_bounds():
  space = SearchSpace((
      hippojax.suggest_float("ridge", 1e-4, 10.0, log=True, shape=(10,)),
      hippojax.suggest_float("lr", 0.0, 1.0, init=0.25)))
  zero = space.initial(0)
  np.testing.assert_array_equal(zero["ridge"], space.default()["ridge"])
  assert zero["lr"] == 0.25
  seen = []
  for seed in (1, 2, 3):
    point = space.initial(seed)
    np.testing.assert_array_equal(point["ridge"], space.initial(seed)["ridge"])
    logs = np.log(point["ridge"])
    a, b = np.log(1e-4), np.log(10.0)
    assert np.all(logs >= a + 0.05 * (b - a) - 1e-12)
    assert np.all(logs <= b - 0.05 * (b - a) + 1e-12)
    assert 0.05 <= float(point["lr"]) <= 0.95
    assert point["ridge"].shape == (10,) and np.shape(point["lr"]) == ()
    seen.append(point["ridge"])
  assert not np.array_equal(seen[0], seen[1])
  assert not np.array_equal(seen[1], seen[2])
