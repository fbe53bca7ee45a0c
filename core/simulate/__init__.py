"""Simulation: phantom volumes and particles with ground truth, on the one projector and CTF."""
