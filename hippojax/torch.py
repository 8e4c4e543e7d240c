"""PyTorch models in hippojax: wrap torch functions as JAX functions.

``import hippojax.torch`` (it needs PyTorch: ``pip install 'hippojax[torch]'``)
gives every hippojax algorithm a PyTorch model::

  import hippojax, hippojax.torch

  model = hippojax.torch.functional(net)                   # a torch.nn.Module
  step = hippojax.torch.gradient_step(train_loss, 0.1)     # torch loss
  val = hippojax.torch.wrap(val_loss)
  params = hippojax.torch.params_of(net)
  hg = hippojax.hoag(step, val, hparams, params, train_batch, val_batch)

Torch code built from the supported layers and losses is translated into
compiled JAX functions (``step.translation(params, hparams, batch).path ==
"jax"``); anything else runs in torch through callbacks, with a
:class:`TorchFallbackWarning` naming what forced it.

See ``docs/pytorch.md`` for a walk-through, the supported layers, where data
is copied, GPU notes and limits.
"""

import importlib.util

if importlib.util.find_spec("torch") is None:  # pragma: no cover
  raise ImportError("hippojax.torch needs PyTorch (torch>=2.4): pip install "
                    "'hippojax[torch]'.")

from hippojax._src.torch_shim import FunctionalModule
from hippojax._src.torch_export import Translation
from hippojax._src.torch_shim import TorchFallbackWarning
from hippojax._src.torch_shim import TorchFunction
from hippojax._src.torch_shim import functional
from hippojax._src.torch_shim import gradient_step
from hippojax._src.torch_shim import load_params
from hippojax._src.torch_shim import params_of
from hippojax._src.torch_shim import wrap

__all__ = (
    "FunctionalModule",
    "TorchFallbackWarning",
    "TorchFunction",
    "Translation",
    "functional",
    "gradient_step",
    "load_params",
    "params_of",
    "wrap",
)
