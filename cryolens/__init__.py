"""cryolens: RELION/cryoSPARC external jobs on a shared PyTorch core."""
__version__ = "0.1.0"
