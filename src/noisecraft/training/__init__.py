"""Training: config recipes, the loop, power-function EMA, atomic checkpoints, DDP.

from noisecraft.training import load_config, train
train(load_config("configs/toy2d.toml", ["optim.lr=2e-3"]), "runs/toy2d")
"""

from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig, load_config, resolve_recipe
from .ema import PowerEMA
from .loop import TrainingDiverged, run, train
from .trainer import Trainer, TrainState

__all__ = [
    "PowerEMA",
    "TrainConfig",
    "TrainState",
    "Trainer",
    "TrainingDiverged",
    "latest_checkpoint",
    "load_checkpoint",
    "load_config",
    "resolve_recipe",
    "run",
    "save_checkpoint",
    "train",
]
