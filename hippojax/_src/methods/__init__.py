"""The methods behind :func:`hippojax.hypergradient`, one object each.

Each method is a small frozen object (see :mod:`.base`) that validates its
options, says which extra arguments ``update`` needs, initialises its part of
the transform's state and computes one hypergradient. :data:`REGISTRY` maps
the ``method=`` names to their builders; :func:`register` adds one.
"""

from hippojax._src.methods.base import accepted
from hippojax._src.methods.base import Method
from hippojax._src.methods.base import MethodState
from hippojax._src.methods.registry import build
from hippojax._src.methods.registry import register
from hippojax._src.methods.registry import REGISTRY

# Importing the modules registers their methods.
from hippojax._src.methods import one_step as _one_step  # noqa: F401
from hippojax._src.methods import implicit as _implicit  # noqa: F401
from hippojax._src.methods import unrolled as _unrolled  # noqa: F401
from hippojax._src.stochastic import amigo as _amigo  # noqa: F401
from hippojax._src.stochastic import saba as _saba  # noqa: F401
from hippojax._src.stochastic import soba as _soba  # noqa: F401

__all__ = ("accepted", "Method", "MethodState", "REGISTRY", "build",
           "register")
