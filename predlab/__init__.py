"""predlab: train the browser boids predator's transformer by imitation, export it back."""
from .config import ModelConfig, TrainConfig, WorldConfig
from .model import TransformerPredator
from .teacher import TeacherPolicy

__all__ = ["ModelConfig", "TrainConfig", "WorldConfig", "TransformerPredator", "TeacherPolicy"]
__version__ = "0.1.0"
