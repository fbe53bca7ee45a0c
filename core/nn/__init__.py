"""Neural-network building blocks: encoders, losses, augmentations, the batched forward pass."""
from .augment import (Compose, PixelDropout, RandomHistogramShift, RandomLowpass, RandomResizedCrop,
                      RandomRotation, RandomTranslation, SoftCircularMask, class_average_augment)
from .embed import run_batched
from .encoders import (PRESETS, EmbeddingHead, Encoder, ResNetEncoder, ViTEncoder, build_encoder,
                       count_parameters, encoder_from_config)
from .losses import LOSSES, TripletMarginLoss, build_loss, mine_triplets, pairwise_distance, register_loss

__all__ = [
    "Compose", "PixelDropout", "RandomHistogramShift", "RandomLowpass", "RandomResizedCrop", "RandomRotation",
    "RandomTranslation", "SoftCircularMask", "class_average_augment", "PRESETS", "EmbeddingHead", "Encoder",
    "ResNetEncoder", "ViTEncoder", "build_encoder", "count_parameters", "encoder_from_config", "LOSSES",
    "TripletMarginLoss", "build_loss", "mine_triplets", "pairwise_distance", "register_loss", "run_batched",
]
