"""Analysis beside training: checks of the paper's theory.

- :mod:`~lightning_mem.analysis.theorem1`: ``lightning-mem theorem1``, the closed form of E[sin(wᵀx)
  sin(wᵀx′)] against Monte Carlo on MNIST pairs.
"""
