"""DAgger (Ross et al., 2011) as a training data source: the student drives, the teacher labels.

Epoch e (counting from 1) draws fresh seeded episodes as behaviour cloning does, but from
epoch `start` on a share 1 - beta of them is driven by the current model (episodes are
picked at random, beta per episode), with beta = max(beta_min, decay ** (e - start + 1)).
Every visited state is labelled with the clean teacher action (closest pursuit), whoever
drove. The samples of all epochs so far are aggregated and trained on together, up to
`buffer` samples (0: twice the fresh samples of the epoch; never fewer than the epoch's own fresh
samples): beyond that the oldest are dropped first (FIFO), which bounds memory
(about 0.8 kB per sample) and the time per epoch.

Exploration noise (WorldConfig.noise) is added to the driving action in both cases.
The buffer travels in resumable checkpoints (state_dict), so a resumed run continues exactly;
undo_epoch forgets an epoch's samples when the trainer undoes an epoch that did not finish.
"""
from __future__ import annotations

import copy
from typing import Dict

import torch

from .config import real_number, whole_number
from .data import EpisodeGenerator, SampleSet
from .train import Callback, episode_generator, epoch_index


class DaggerSource(Callback):
    """for_epoch(epoch, trainer) -> the aggregated SampleSet; trainer.model is the student.

    Also a callback: its on_evaluate adds dagger_beta and dagger_samples to the epoch logs
    (create_trainer registers it).
    """

    def __init__(self, generator: EpisodeGenerator, episodes_per_epoch: int, start: int = 2, decay: float = 0.5,
                 beta_min: float = 0.1, buffer: int = 0):
        # types too: buffer=2.5 or episodes_per_epoch="4" failed only once an epoch's episodes were generated
        episodes_per_epoch = whole_number("episodes_per_epoch", episodes_per_epoch, 1)
        start, buffer = whole_number("start", start, 1), whole_number("buffer", buffer, 0)
        decay, beta_min = real_number("decay", decay, 0, 1), real_number("beta_min", beta_min, 0, 1)
        self.generator, self.episodes = episode_generator("DaggerSource", generator), episodes_per_epoch
        self.start, self.decay, self.beta_min, self.buffer = start, decay, beta_min, buffer
        self.data = SampleSet.empty()
        self._undo = None        # (epoch, samples it dropped, how many it added, its result) of the last for_epoch
        self.last: Dict[str, float] = {}

    def beta(self, epoch: int) -> float:
        """Share of teacher-driven episodes in epoch `epoch` (counting from 1)."""
        if epoch < self.start:
            return 1.0
        return max(self.beta_min, self.decay ** (epoch - self.start + 1))

    def _student(self, trainer):
        """A frozen copy of the model on the device the episodes are simulated on (the generator's:
        the CPU, unless it was made with a GPU device)."""
        from .evaluate import ModelPolicy
        # worker processes rebuild the model from config + weights; in-process use the fast batched policy.
        # The generator starts workers on the CPU only: on a GPU the episodes run in this process, and the
        # bare CPU model met CUDA observations there
        workers = self.generator.num_workers > 0 and self.generator.device.type == "cpu"
        model = copy.deepcopy(trainer.model).to("cpu" if workers else self.generator.device).eval()
        return model if workers else ModelPolicy(model)

    def for_epoch(self, epoch: int, trainer=None) -> SampleSet:
        """Fresh episodes for 0-based epoch index `epoch` (stream 1 + epoch, as EpisodeSource), aggregated."""
        epoch = epoch_index(epoch)
        e = epoch + 1
        beta = self.beta(e)
        if beta < 1 and trainer is None:   # the student is the trainer's model: without it, plain cloning logged as DAgger
            raise ValueError(f"DaggerSource.for_epoch({epoch}): epoch {e} rolls out the student (beta {beta:g}), "
                             f"which is the trainer's model: pass trainer=")
        student = self._student(trainer) if beta < 1 else None
        self._undo = None      # the last epoch finished: the samples it dropped go before this one's are made
        fresh = self.generator.generate(self.episodes, stream=1 + epoch, student=student, beta=beta,
                                        desc=f"episodes (epoch {e}, beta {beta:.2f})")
        old, made = self.data, len(fresh)
        # never fewer than the epoch's own: a buffer below them trained on a few of the samples just made
        cap = max(self.buffer, made) if self.buffer else 2 * made
        drop = max(0, len(old) + made - cap)       # the oldest, all of earlier epochs (cap >= made)
        # the kept rows as views, copied once into the new set: the old set, the fresh samples and the
        # new set are all there is at the peak (about 5 epochs' samples; copying the old and fresh ones
        # together first and then the kept rows out of that held 10, twice what the memory check counts)
        data = SampleSet.cat([old.select(slice(drop, None)) if drop else old, fresh])
        del fresh
        # at most an epoch's samples; kept for undo_epoch
        dropped = old.select(torch.arange(drop)) if drop else SampleSet.empty(data.boids.shape[1])
        # the record names the samples it undoes: a Ctrl-C after it and before they are stored
        # leaves self.data as it was, which undo_epoch then keeps
        self._undo = (epoch, dropped, made, data)
        self.data = data
        self.last = {"dagger_beta": beta, "dagger_samples": float(len(data))}
        return data

    def state_dict(self) -> Dict:
        """The aggregated samples, compact (live boids only)."""
        # on the CPU, as every tensor of a checkpoint: a GPU generator's samples made one that a machine without
        # a GPU could not read with torch.load
        return {"dagger_buffer": {k: v.cpu() for k, v in self.data.to_ragged().items()}}

    def undo_epoch(self, epoch: int) -> None:
        """The samples as they were before for_epoch(epoch) (the trainer undoes an epoch that did not finish)."""
        if self._undo is not None and self._undo[0] == epoch:
            _, dropped, fresh, stored = self._undo
            if self.data is stored:     # else the epoch was cut before its samples were stored
                every = SampleSet.cat([dropped, self.data])           # the samples before it, then its own
                self.data = every.select(torch.arange(len(every) - fresh))
            self._undo = None

    def load_state_dict(self, state: Dict) -> None:
        """The samples of state_dict(); none for a state without them (a checkpoint saved without data)."""
        if state and "dagger_buffer" not in state:    # {"foo": 1} started an empty buffer without a word
            raise ValueError(f"the data source's state holds no dagger_buffer (it holds {', '.join(map(str, state))})")
        self.data = SampleSet.from_ragged(state["dagger_buffer"]) if "dagger_buffer" in state else SampleSet.empty()
        # where the generator makes its samples: a checkpoint loads on the CPU, and a GPU run's first epoch after a
        # resume failed to join the two in torch.cat's words
        self.data = self.data.to_device(self.generator.device)
        self._undo = None

    def on_evaluate(self, trainer, epoch, logs):
        logs.update(self.last)
