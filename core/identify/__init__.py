"""Which protein is each 2D class average: retrieval against a library of maps.

``library`` (the reference library and its file), ``model`` (the embedding), ``decoys`` (the
fixed null proteins, and ``prepare_library``, which readies a library for scoring), ``score``
(embedding / correlation / combined scoring and the calibrated answer), ``train`` (the training
recipe), ``figures`` (the gallery).
"""
from .decoys import build_decoys, prepare_library
from .library import Decoys, Library, fibonacci_views, render_references
from .model import FEATURES, MODES, SHORTLIST, IdentityModel, embed_decoys, embed_images, embed_library
from .score import (EntryScores, Identification, confidence_features, decoy_z, identify, prepare_queries,
                    score_entries, shortlist_entries)

__all__ = ["FEATURES", "MODES", "SHORTLIST", "Decoys", "EntryScores", "Identification", "IdentityModel", "Library",
           "build_decoys", "confidence_features", "decoy_z", "embed_decoys", "embed_images", "embed_library",
           "fibonacci_views", "identify", "prepare_library", "prepare_queries", "render_references", "score_entries",
           "shortlist_entries"]
