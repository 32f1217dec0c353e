"""python -m predlab.train and create_trainer: what the command line reads, checks, says and
writes, run in this process with tiny settings."""
import pytest

from predlab.config import WorldConfig
from predlab.train import create_trainer

TINY_WORLD = WorldConfig(frames=12, boids_max=12)
TINY_FLAGS = ["--train_episodes", "6", "--val_episodes", "3", "--frames", "12", "--boids_max", "12",
              "--batch-size", "32", "--save_every", "1", "--quiet"]


def test_create_trainer_with_verbose_off_prints_nothing(capsys):
    """verbose=False is for notebooks and scripts that print their own lines: no device line, no
    validation line, and no progress bar while the validation episodes are made."""
    create_trainer(train_episodes=2, val_episodes=2, device="cpu", verbose=False, world_config=TINY_WORLD,
                   eval_every=0)
    assert capsys.readouterr() == ("", "")
    create_trainer(train_episodes=2, val_episodes=2, device="cpu", verbose=True, world_config=TINY_WORLD,
                   eval_every=0, progress=False)
    assert "validation: 2 episodes" in capsys.readouterr().out
