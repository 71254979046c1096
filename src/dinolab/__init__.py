"""dinolab: self-supervised Vision Transformer pretraining in the DINO family."""

from dinolab import config, data, eval, hub, losses, models, train

__version__ = "0.1.0"
__all__ = ["config", "data", "eval", "hub", "losses", "models", "train"]
