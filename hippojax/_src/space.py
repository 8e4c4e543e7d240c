r"""Search spaces: bounded float hyperparameters, scalar or array-shaped.

A hyperparameter is declared with :func:`suggest_float`, as in Optuna. The
gradient methods never see the bounds: they optimise an unconstrained ``u``
that a bijection maps into ``(low, high)``,

.. math::
   v = \text{low} + (\text{high} - \text{low})\, \sigma(u)
   \quad\text{or, with } \texttt{log=True},\quad
   v = \exp\!\big(\log \text{low}
       + (\log \text{high} - \log \text{low})\, \sigma(u)\big),

with ``σ`` the logistic sigmoid, so the model always receives values inside
the bounds and the hypergradient with respect to ``u`` follows by the chain
rule. The black-box samplers see the same bounds through Optuna's
``FloatDistribution`` (one distribution per array element).
"""

import dataclasses
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any

# u is clipped here before the sigmoid: |u| <= 30 already gives values within
# 1e-13 of the bounds, and keeps σ(u)(1 − σ(u)) representable in float32.
_U_CLIP = 30.0
# Values are pulled this far (relative to the range) inside the bounds before
# the logit, so bounds themselves map to finite u.
_EDGE = 1e-6


def _check_real(name: str, value: Any) -> float:
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise TypeError(f"{name} must be a real number, got {value!r} of type "
                    f"{type(value).__name__}.")
  if not math.isfinite(value):
    raise ValueError(f"{name} must be finite, got {value!r}.")
  return float(value)


@dataclasses.dataclass(frozen=True)
class FloatParam:
  """A bounded float hyperparameter (scalar or array).

  Attributes:
    name: the name; array elements are recorded as ``name[i]`` (flat index).
    low: lower bound (inclusive for samplers, approached by the bijection).
    high: upper bound, ``> low``.
    log: sample and optimise on a log scale (requires ``low > 0``).
    shape: the array shape, ``()`` for a scalar.
    init: the starting value of the gradient methods (every element);
      ``None`` means the midpoint of the (log) range.
  """

  name: str
  low: float
  high: float
  log: bool = False
  shape: tuple[int, ...] = ()
  init: float | None = None

  def __post_init__(self):
    if not isinstance(self.name, str) or not self.name:
      raise TypeError(f"name must be a non-empty string, got {self.name!r}.")
    if "[" in self.name or "]" in self.name:
      raise ValueError(f"name must not contain '[' or ']' (they index array "
                       f"elements), got {self.name!r}.")
    low = _check_real("low", self.low)
    high = _check_real("high", self.high)
    if not low < high:
      raise ValueError(f"suggest_float({self.name!r}): low must be < high, "
                       f"got low={low!r}, high={high!r}.")
    if self.log and low <= 0:
      raise ValueError(f"suggest_float({self.name!r}): log=True needs "
                       f"low > 0, got low={low!r}.")
    shape = self.shape
    if isinstance(shape, numbers.Integral):
      shape = (int(shape),)
    try:
      shape = tuple(shape)
    except TypeError:
      raise TypeError(f"suggest_float({self.name!r}): shape must be a tuple "
                      f"of ints, got {self.shape!r}.") from None
    for d in shape:
      if isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1:
        raise ValueError(f"suggest_float({self.name!r}): shape must be a "
                         f"tuple of positive ints, got {self.shape!r}.")
    object.__setattr__(self, "shape", tuple(int(d) for d in shape))
    object.__setattr__(self, "low", low)
    object.__setattr__(self, "high", high)
    object.__setattr__(self, "log", bool(self.log))
    if self.init is not None:
      init = _check_real("init", self.init)
      if not low <= init <= high:
        raise ValueError(f"suggest_float({self.name!r}): init={init!r} is "
                         f"outside [{low!r}, {high!r}].")
      object.__setattr__(self, "init", init)

  @property
  def size(self) -> int:
    """The number of scalar hyperparameters (``prod(shape)``)."""
    return math.prod(self.shape)

  @property
  def element_names(self) -> list[str]:
    """``[name]`` for a scalar, ``[name[0], name[1], …]`` (flat) otherwise."""
    if not self.shape:
      return [self.name]
    return [f"{self.name}[{i}]" for i in range(self.size)]

  def _interval(self):
    if self.log:
      return math.log(self.low), math.log(self.high)
    return self.low, self.high

  def constrain(self, u: jax.Array) -> jax.Array:
    """Maps unconstrained ``u`` into ``(low, high)`` (differentiable)."""
    a, b = self._interval()
    s = jax.nn.sigmoid(jnp.clip(u, -_U_CLIP, _U_CLIP))
    z = a + (b - a) * s
    return jnp.exp(z) if self.log else z

  def unconstrain(self, value: Any) -> np.ndarray:
    """The inverse of :meth:`constrain`, computed in NumPy float64."""
    a, b = self._interval()
    v = self.broadcast(value, f"{self.name}: got a value of shape")
    z = np.log(np.maximum(v, self.low)) if self.log else v
    s = np.clip((z - a) / (b - a), _EDGE, 1 - _EDGE)
    return np.log(s) - np.log1p(-s)

  def broadcast(self, value: Any, what: str) -> np.ndarray:
    """``value`` as float64 of this parameter's shape (broadcast if needed).

    Raises:
      ValueError: ``"{what} (shape), expected (shape)."`` if it cannot be.
    """
    v = np.asarray(value, np.float64)
    if v.shape == self.shape:
      return v
    try:
      return np.broadcast_to(v, self.shape)
    except ValueError:
      raise ValueError(f"{what} {v.shape}, expected {self.shape}.") from None

  def default(self) -> np.ndarray:
    """The starting value: ``init``, or the midpoint of the (log) range."""
    if self.init is not None:
      v = self.init
    elif self.log:
      v = math.sqrt(self.low * self.high)
    else:
      v = 0.5 * (self.low + self.high)
    return np.full(self.shape, v, np.float64)

  def sample(self, rng: np.random.Generator) -> np.ndarray:
    """Uniform on the (log) scale over the middle 90% of the range."""
    a, b = self._interval()
    z = rng.uniform(a + 0.05 * (b - a), b - 0.05 * (b - a), self.shape)
    return np.exp(z) if self.log else z

  def describe(self) -> dict:
    """A JSON-able description, used to refuse resuming a changed space."""
    return {"name": self.name, "low": self.low, "high": self.high,
            "log": self.log, "shape": list(self.shape)}


def suggest_float(name: str, low: float, high: float, *, log: bool = False,
                  shape: int | Sequence[int] = (),
                  init: float | None = None) -> FloatParam:
  r"""Declares a float hyperparameter in ``[low, high]``, possibly an array.

  Gradient methods optimise it through the bijection of this module
  (sigmoid, on a log scale when ``log=True``), so the model always sees
  values in bounds; the black-box methods sample it with Optuna's
  ``FloatDistribution(low, high, log=log)``, one per array element.

  Args:
    name: the hyperparameter's name (a key of the ``hparams`` dict the
      problem's functions receive).
    low: lower bound.
    high: upper bound, ``> low``.
    log: log scale; requires ``low > 0``.
    shape: array shape (``()`` for a scalar; an int means ``(int,)``).
    init: starting value of the gradient methods, inside the bounds;
      ``None`` for the midpoint of the (log) range.

  Returns:
    A :class:`FloatParam`.

  Raises:
    ValueError: if ``low >= high``, ``log=True`` with ``low <= 0``, a shape
      entry is not a positive int, or ``init`` is out of bounds.
    TypeError: if a bound is not a real number.

  Examples:
    >>> import hippojax
    >>> p = hippojax.suggest_float("ridge", 1e-4, 1e2, log=True, shape=10)
    >>> p.size, p.element_names[:2]
    (10, ['ridge[0]', 'ridge[1]'])
  """
  return FloatParam(name, low, high, log=log, shape=shape, init=init)


@dataclasses.dataclass(frozen=True)
class SearchSpace:
  """An ordered, hashable collection of :class:`FloatParam`.

  Hyperparameters travel as a dict ``{name: array}``: constrained values for
  the model, unconstrained ``u`` for the gradient methods.

  Attributes:
    params: the declared hyperparameters, in order.
  """

  params: tuple[FloatParam, ...]

  def __post_init__(self):
    params = tuple(self.params)
    if not params:
      raise ValueError("a search space needs at least one hyperparameter.")
    for p in params:
      if not isinstance(p, FloatParam):
        raise TypeError(f"search space entries must come from suggest_float, "
                        f"got {p!r}.")
    names = [p.name for p in params]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
      raise ValueError(f"hyperparameter names must be unique, got "
                       f"duplicates {duplicates}.")
    object.__setattr__(self, "params", params)

  @property
  def names(self) -> list[str]:
    return [p.name for p in self.params]

  @property
  def size(self) -> int:
    """The total number of scalar hyperparameters."""
    return sum(p.size for p in self.params)

  def __iter__(self):
    return iter(self.params)

  def __len__(self):
    return len(self.params)

  def constrain(self, u: Mapping[str, jax.Array]) -> dict:
    """``{name: u}`` to ``{name: value in bounds}`` (differentiable)."""
    return {p.name: p.constrain(u[p.name]) for p in self.params}

  def unconstrain(self, values: Mapping[str, Any], dtype=None) -> dict:
    """``{name: value}`` to ``{name: u}`` as arrays of ``dtype``."""
    dtype = dtype or jnp.zeros(()).dtype
    return {p.name: jnp.asarray(p.unconstrain(values[p.name]), dtype)
            for p in self.params}

  def default(self) -> dict:
    """The starting values ``{name: float64 array}``."""
    return {p.name: p.default() for p in self.params}

  def initial(self, seed: int) -> dict:
    """Where the gradient chain of ``seed`` starts ``{name: float64 array}``.

    Seed 0 starts from :meth:`default` (``init`` or the midpoint); every
    other seed from a point drawn with ``numpy.random.default_rng(seed)``,
    each element uniform on the (log) scale over the middle 90% of its
    range, so that workers with different seeds explore different chains.
    """
    if seed == 0:
      return self.default()
    rng = np.random.default_rng(seed)
    return {p.name: p.sample(rng) for p in self.params}

  def describe(self) -> list[dict]:
    return [p.describe() for p in self.params]

  def distributions(self) -> dict:
    """Optuna distributions for every scalar element, keyed by element name."""
    from optuna.distributions import FloatDistribution
    out = {}
    for p in self.params:
      for n in p.element_names:
        out[n] = FloatDistribution(p.low, p.high, log=p.log)
    return out

  def flatten(self, values: Mapping[str, Any]) -> dict[str, float]:
    """``{name: array}`` to ``{element name: float}`` (clipped into bounds)."""
    out = {}
    for p in self.params:
      v = np.clip(np.asarray(values[p.name], np.float64).reshape(-1), p.low,
                  p.high)
      out.update(zip(p.element_names, (float(x) for x in v)))
    return out

  def unflatten(self, flat: Mapping[str, float]) -> dict:
    """``{element name: float}`` to ``{name: float64 array}``."""
    return {p.name: np.asarray([flat[n] for n in p.element_names],
                               np.float64).reshape(p.shape)
            for p in self.params}

  def suggest(self, trial) -> dict:
    """Samples every element with ``trial.suggest_float`` (black-box)."""
    flat = {n: trial.suggest_float(n, d.low, d.high, log=d.log)
            for n, d in self.distributions().items()}
    return self.unflatten(flat)

  def summary(self, values: Mapping[str, Any]) -> dict:
    """Short human-readable values: scalars as floats, arrays as stats."""
    out = {}
    for p in self.params:
      v = np.asarray(values[p.name], np.float64)
      if not p.shape:
        out[p.name] = float(v)
      else:
        out[p.name] = {"shape": list(p.shape), "min": float(v.min()),
                       "median": float(np.median(v)), "max": float(v.max())}
    return out


def as_space(space: Any) -> SearchSpace:
  """Accepts a :class:`SearchSpace`, or a sequence of :class:`FloatParam`."""
  if isinstance(space, SearchSpace):
    return space
  if isinstance(space, FloatParam):
    return SearchSpace((space,))
  try:
    return SearchSpace(tuple(space))
  except TypeError:
    raise TypeError("space must be a SearchSpace or a sequence of "
                    f"suggest_float(...) parameters, got {space!r}.") from None
