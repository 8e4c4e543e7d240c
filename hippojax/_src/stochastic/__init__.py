"""Stochastic (minibatch) hypergradients and single-loop bilevel solvers."""
