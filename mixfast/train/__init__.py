"""Training: `TrainConfig` (config.py), data streams (streams.py), each phase's loss and batch
(objectives.py), DDP (distributed.py), device-side meters (meters.py) and `MixTrainer`
(trainer.py), which composes them."""

from mixfast.train.config import NonFiniteLossError, TrainConfig
from mixfast.train.run_log import TrainResult
from mixfast.train.trainer import MixTrainer, train

__all__ = ["MixTrainer", "NonFiniteLossError", "TrainConfig", "TrainResult", "train"]
