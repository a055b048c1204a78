"""Simulation: priors, GalSim rendering, the source bank, scenes and the paper's datasets."""
