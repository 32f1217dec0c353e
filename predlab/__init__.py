"""predlab: train the browser boids predator's transformer by imitation, export it back."""
import os

# Before torch loads its OpenMP runtime: threads that wait sleep instead of spinning. With the cores shared
# (another program, a second run), spinning threads held the cores the working ones needed, and the
# small-batch work (DAgger's student, the catch check, validation) ran up to 40x slower. A value the
# user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .config import ModelConfig, TrainConfig, WorldConfig
from .model import TransformerPredator
from .teacher import TeacherPolicy

__all__ = ["ModelConfig", "TrainConfig", "WorldConfig", "TransformerPredator", "TeacherPolicy"]
__version__ = "0.1.0"
