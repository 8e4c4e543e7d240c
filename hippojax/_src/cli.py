"""The ``hippojax`` command line."""

import argparse
import sys


def _demo(args) -> int:
  import jax
  jax.config.update("jax_enable_x64", True)
  from hippojax._src.demo import run_demo
  r = run_demo(outer_steps=args.steps, inner_steps=args.inner_steps,
               seed=args.seed)
  print("hippojax demo: per-feature ridge on diabetes, tuned with hoag + adam")
  print(f"  outer steps            {r['outer_steps']} "
        f"({r['inner_steps']} warm-started inner steps each, "
        f"{r['seconds']:.2f}s)")
  print(f"  validation loss        {r['val_loss_before']:.6f} -> "
        f"{r['val_loss_after']:.6f}")
  print(f"  hoag vs exact rel err  {r['hypergrad_rel_error']:.2e} at the "
        f"trained weights (CG: {r['cg_iterations']} iterations, residual "
        f"{r['cg_residual']:.1e})")
  print(f"                         {r['hypergrad_rel_error_at_optimum']:.2e} "
        "at the exact inner optimum")
  print(f"  ridge strengths        {r['ridge_strengths']}")
  return 0


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="hippojax",
      description="Gradient-based hyperparameter optimisation in JAX.")
  sub = parser.add_subparsers(dest="command", required=True)
  demo = sub.add_parser(
      "demo", help="tune per-feature ridge strengths on diabetes with hoag")
  demo.add_argument("--steps", type=int, default=40, help="outer steps")
  demo.add_argument("--inner-steps", type=int, default=300,
                    help="warm-started inner gradient steps per outer step")
  demo.add_argument("--seed", type=int, default=0)
  demo.set_defaults(func=_demo)
  return parser


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  return args.func(args)


if __name__ == "__main__":
  sys.exit(main())
