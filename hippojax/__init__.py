"""hippojax: pure, jit-compiled hypergradients for hyperparameter optimisation.

Each algorithm is a pure function ``(train_step, val_loss, hparams, …) ->
HyperGrad`` built on ``jax.vjp``/``jax.jvp``; see the README for the method
table and the design.
"""

from hippojax._src.base import HyperGrad
from hippojax._src.base import HyperGradInfo
from hippojax._src.base import SolverStats
from hippojax._src.implicit import hoag
from hippojax._src.implicit import ift
from hippojax._src.implicit import implicit_hypergrad
from hippojax._src.implicit_diff import custom_fixed_point
from hippojax._src.implicit_diff import custom_root
from hippojax._src.one_step import t1t2
from hippojax._src.polish import polish
from hippojax._src.online_lr import hypergradient_descent
from hippojax._src.online_lr import HypergradientDescentState
from hippojax._src.solvers import BiCGStab
from hippojax._src.solvers import CG
from hippojax._src.solvers import GMRES
from hippojax._src.solvers import Neumann
from hippojax._src.space import FloatParam
from hippojax._src.space import SearchSpace
from hippojax._src.space import suggest_float
from hippojax._src.steps import GradientStep
from hippojax._src.steps import gradient_step
from hippojax._src.steps import HeavyBallState
from hippojax._src.steps import HeavyBallStep
from hippojax._src.steps import heavy_ball_step
from hippojax._src.steps import optax_step
from hippojax._src.steps import OptaxState
from hippojax._src.steps import OptaxStep
from hippojax._src.chain import ChainFailedError
from hippojax._src.storage import ChainBusyError
from hippojax._src.storage import StorageError
from hippojax._src.stochastic.maid import maid
from hippojax._src.stochastic.maid import maid_init
from hippojax._src.stochastic.maid import maid_step
from hippojax._src.stochastic.maid import MaidResult
from hippojax._src.stochastic.maid import MaidState
from hippojax._src.stochastic.maid import MaidStepInfo
from hippojax._src.stochastic.minibatch import minibatch_hypergrad
from hippojax._src.stochastic.minibatch import MinibatchHyperGrad
from hippojax._src.stochastic.saba import memory_bytes as saba_memory_bytes
from hippojax._src.stochastic.saba import SabaMemory
from hippojax._src.study import create_study
from hippojax._src.study import load_study
from hippojax._src.study import Study
from hippojax._src.transform import hypergradient
from hippojax._src.transform import HypergradientState
from hippojax._src.unrolled import drmad
from hippojax._src.unrolled import forward
from hippojax._src.unrolled import reverse
from hippojax import problems

__version__ = "0.1.0"

__all__ = (
    "BiCGStab",
    "CG",
    "ChainBusyError",
    "ChainFailedError",
    "FloatParam",
    "GMRES",
    "GradientStep",
    "HeavyBallState",
    "HeavyBallStep",
    "HyperGrad",
    "HyperGradInfo",
    "HypergradientDescentState",
    "HypergradientState",
    "MaidResult",
    "MaidState",
    "MaidStepInfo",
    "MinibatchHyperGrad",
    "Neumann",
    "OptaxState",
    "OptaxStep",
    "SabaMemory",
    "SearchSpace",
    "SolverStats",
    "StorageError",
    "Study",
    "create_study",
    "custom_fixed_point",
    "custom_root",
    "drmad",
    "forward",
    "gradient_step",
    "heavy_ball_step",
    "hoag",
    "hypergradient",
    "hypergradient_descent",
    "ift",
    "implicit_hypergrad",
    "load_study",
    "maid",
    "maid_init",
    "maid_step",
    "minibatch_hypergrad",
    "optax_step",
    "polish",
    "problems",
    "reverse",
    "saba_memory_bytes",
    "suggest_float",
    "t1t2",
)
