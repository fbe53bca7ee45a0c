"""Which protein is each 2D class average: retrieval against a library of maps.

``library`` (the reference library), ``model`` (the embedding and its batched embedder),
``decoys`` (the fixed null proteins), ``score`` (embedding / correlation / combined scoring and the
calibrated answer), ``train`` (the training recipe), ``figures`` (the gallery).
"""
from .library import Library, fibonacci_views, render_references
from .model import FEATURES, MODES, SHORTLIST, IdentityModel, embed_images, embed_library
from .score import (EntryScores, Identification, confidence_features, decoy_z, identify, prepare_queries,
                    score_entries, shortlist_entries)

__all__ = ["FEATURES", "MODES", "SHORTLIST", "EntryScores", "Identification", "IdentityModel", "Library",
           "confidence_features", "decoy_z", "embed_images", "embed_library", "fibonacci_views", "identify",
           "prepare_queries", "render_references", "score_entries", "shortlist_entries"]
