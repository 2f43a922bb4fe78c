"""genkit: train, evaluate, sample and share image generative models on the Hugging Face stack."""

from .config import DataConfig, TrainConfig

__version__ = "0.1.0"
__all__ = ["DataConfig", "TrainConfig", "__version__"]
