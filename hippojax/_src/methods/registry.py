"""``method=`` name → builder ``(**options) -> Method``."""

from typing import Any, Callable

REGISTRY: dict[str, Callable[..., Any]] = {}


def register(name: str) -> Callable:
  """Class decorator: ``hypergradient(method=name, **options)`` builds it."""

  def wrap(cls):
    if name in REGISTRY:
      raise ValueError(f"method {name!r} is already registered.")
    REGISTRY[name] = cls
    cls.name = name
    return cls

  return wrap


def build(method: str, options: dict) -> Any:
  """The method object for ``method`` with ``options`` validated."""
  if not isinstance(method, str) or method not in REGISTRY:
    raise ValueError(f"method={method!r} is not one of "
                     f"{', '.join(repr(m) for m in REGISTRY)}.")
  cls = REGISTRY[method]
  allowed = cls.option_names()
  unknown = sorted(set(options) - set(allowed))
  if unknown:
    raise TypeError(
        f"hypergradient(method={method!r}) got unknown option(s) "
        f"{', '.join(unknown)}; options of {method!r}: "
        f"{', '.join(sorted(allowed)) or 'none'}.")
  return cls.create(**options)
