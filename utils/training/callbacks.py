"""Training callbacks the Keras set lacks: per-step LR schedule, NaN guard that names the
step, resumable training state, periodic mAP + best/last checkpoints, and a curves plot.

Keras' own callbacks are used where they fit (CSVLogger, TensorBoard, SwapEMAWeights); these
fill the gaps:
- ``LRSchedule``: warm-up then cosine or step decay, computed from (epoch, step), so the
  schedule position is a pure function of where training is and resumes exactly.
- ``NanGuard``: keras.callbacks.TerminateOnNaN stops training but does not say where, and
  the next callbacks would still checkpoint NaN weights; this one names epoch and step and
  raises a flag the checkpoint callbacks honour.
- ``ResumeState``: model + optimizer weights and the epoch counter, written atomically at
  each epoch end (BackupAndRestore keeps one fit() call's state, but training runs as two
  fit() calls, frozen then unfrozen, and must resume into the right one).
"""
from __future__ import annotations

import json
import math
import os

import keras
import numpy as np

from utils.checkpoint import atomic_path, save_detector


def lr_at(epoch: float, total_epochs: int, base_lr: float, min_lr: float, warmup_epochs: float,
          kind: str = "cos", step_epochs=(), step_gamma: float = 0.1, restart=None) -> float:
    """Learning rate at fractional ``epoch``: linear warm-up, then cosine or step decay.

    ``restart=(epoch0, lr0)``: the run was extended at ``epoch0`` (``--resume --epochs N``
    with a new end): from there the cosine goes from ``lr0``, the rate the run had reached,
    to ``min_lr`` at the new end, so the rate neither jumps nor restarts its warm-up. Step
    decay keeps its absolute epochs.
    """
    if restart is not None and kind == "cos" and epoch >= restart[0]:
        epoch0, lr0 = float(restart[0]), float(restart[1])
        t = min(max((epoch - epoch0) / max(total_epochs - epoch0, 1e-9), 0.0), 1.0)
        return min_lr + 0.5 * (lr0 - min_lr) * (1 + math.cos(math.pi * t))
    if warmup_epochs > 0 and epoch < warmup_epochs:
        start = base_lr * 0.1
        return start + (base_lr - start) * epoch / warmup_epochs
    if kind == "cos":
        span = max(total_epochs - warmup_epochs, 1e-9)
        t = min(max((epoch - warmup_epochs) / span, 0.0), 1.0)
        return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * t))
    if kind == "step":
        drops = sum(1 for e in step_epochs if epoch >= e)
        return max(base_lr * step_gamma ** drops, min_lr)
    raise ValueError(f"unknown LR schedule {kind!r}; valid: cos, step")


class LRSchedule(keras.callbacks.Callback):
    """Sets the optimizer's learning rate before every step from (epoch, step)."""

    def __init__(self, steps_per_epoch: int, **schedule):
        super().__init__()
        self.steps_per_epoch = max(int(steps_per_epoch), 1)
        self.schedule = schedule
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        self.pending = lr_at(self.epoch + batch / self.steps_per_epoch, **self.schedule)
        self.model.optimizer.learning_rate.assign(self.pending)

    def on_train_batch_end(self, batch, logs=None):
        self.last = self.pending

    def on_epoch_end(self, epoch, logs=None):
        # the rate of the epoch's last step: with a pipeline of unknown length (several
        # workers) Keras begins one more batch that finds no data, and that rate was never used
        if logs is not None:
            last = getattr(self, "last", None)
            logs["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)) if last is None \
                else float(last)


class StepCount(keras.callbacks.Callback):
    """Keeps ``optimizer.iterations`` equal to the training steps taken.

    Under MultiWorkerMirroredStrategy the per-worker pipelines have no known length (see
    trainer.distributed_data), so Keras begins one more step per epoch that finds no data; that
    step changes no weight and no slot, but TensorFlow's distributed iterator lets it reach the
    optimizer's counter (measured: 3 after an epoch of 2 steps, 2 in one process). AdamW's bias
    correction and the EMA warm-up read that counter, so the run would drift one step per epoch
    from one process. At the epoch's end the counter is set back to the steps that ended.
    """

    def on_epoch_begin(self, epoch, logs=None):
        self.start, self.done = None, 0

    def on_train_batch_begin(self, batch, logs=None):
        if self.start is None:
            self.start = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def on_train_batch_end(self, batch, logs=None):
        self.done = batch + 1  # the step that ended (also with several steps per execution)

    def on_epoch_end(self, epoch, logs=None):
        if self.start is None:
            return
        counter = self.model.optimizer.iterations
        if int(keras.ops.convert_to_numpy(counter)) != self.start + self.done:
            counter.assign(self.start + self.done)


class NanGuard(keras.callbacks.Callback):
    """Stops training at the first non-finite loss and says where."""

    def __init__(self, log=print):
        super().__init__()
        self.log = log
        self.epoch = 0
        self.tripped = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(loss)):
            self.tripped = (self.epoch + 1, batch + 1)
            self.log(f"error: loss became {float(loss)} at epoch {self.epoch + 1}, step {batch + 1}; "
                     "training stopped. The last good checkpoint is left in place "
                     "(lower the learning rate or check the data).")
            self.model.stop_training = True


class ResumeState(keras.callbacks.Callback):
    """Model + optimizer state at every epoch end, committed by ``resume.json``.

    Weights go to ``resume_{0,1}.weights.h5`` (alternating) from this callback, which must
    run before SwapEMAWeights so the raw (not EMA) weights are saved; ``commit()`` (called by
    the ``committer`` callback, placed last) then writes ``resume.json`` naming that file,
    the epoch and the best mAP. A kill at any moment leaves the previous commit intact.
    """

    def __init__(self, save_dir, guard: NanGuard, extra: dict | None = None, best_map=lambda: -1.0, sync=None):
        super().__init__()
        self.sync = sync  # several workers: wait for all before committing, so they commit the same epoch
        self.save_dir = save_dir
        self.state_path = os.path.join(save_dir, "resume.json")
        self.guard = guard
        self.extra = extra or {}
        self.best_map = best_map
        self.pending = None
        outer = self

        class _Committer(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                outer.commit(epoch)
        self.committer = _Committer()

    def on_epoch_end(self, epoch, logs=None):
        if self.guard.tripped:
            self.pending = None
            return
        name = f"resume_{epoch % 2}.weights.h5"
        with atomic_path(os.path.join(self.save_dir, name)) as tmp:
            self.model.save_weights(tmp)
        self.pending = name

    def commit(self, epoch):
        if self.sync is not None:
            self.sync()
        if self.pending is None:
            return
        state = {"epoch": epoch + 1, "weights": self.pending, "best_map": float(self.best_map()), **self.extra}
        with atomic_path(self.state_path) as tmp, open(tmp, "w") as f:
            json.dump(state, f, indent=2)
        self.pending = None

    @staticmethod
    def read(save_dir) -> dict | None:
        path = os.path.join(save_dir, "resume.json")
        if not os.path.isfile(path):
            return None
        with open(path) as f:
            return json.load(f)


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked (resume without state, a run already there)."""


def open_run_state(save_dir, resume: bool, exist_ok: bool, state_dir=None) -> dict | None:
    """The resume state to continue from (None for a new run), after the checks train.py and
    classify.py share: --resume needs a state; a folder that holds a run needs --resume or
    --exist-ok. ``state_dir`` (default ``save_dir``) is where the state lives; it is created."""
    state_dir = save_dir if state_dir is None else state_dir
    state = ResumeState.read(state_dir) if resume else None
    if resume and state is None:
        raise RunFolderError(f"--resume: no resume state in {state_dir} (resume.json); start without --resume")
    if not resume and os.path.isfile(os.path.join(state_dir, "resume.json")) and not exist_ok:
        raise RunFolderError(f"{save_dir} already holds a run; pass --resume to continue it, "
                             "--exist-ok to overwrite it, or another --save-dir")
    os.makedirs(state_dir, exist_ok=True)
    return state


class EvalCheckpoint(keras.callbacks.Callback):
    """Every ``every`` epochs: mAP@0.5 on the validation records; ``last.keras`` each epoch,
    ``best.keras`` when mAP improves. Place it after SwapEMAWeights(swap_on_epoch=True) so it
    sees (and saves) the EMA weights."""

    def __init__(self, body, meta, save_dir, evaluate_fn, every: int, total_epochs: int,
                 guard: NanGuard, best_map: float = -1.0, log=print):
        super().__init__()
        self.body, self.meta, self.save_dir = body, meta, save_dir
        self.evaluate_fn, self.every, self.total_epochs = evaluate_fn, max(int(every), 1), total_epochs
        self.guard, self.best_map, self.log = guard, best_map, log

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if self.guard.tripped:
            return
        m = float("nan")
        if self.evaluate_fn is not None and ((epoch + 1) % self.every == 0 or epoch + 1 == self.total_epochs):
            m = float(self.evaluate_fn(self.body))
            self.log(f"epoch {epoch + 1}: val mAP@0.5 = {m:.4f} (best {max(self.best_map, m):.4f})")
        logs["val_map50"] = m
        save_detector(self.body, os.path.join(self.save_dir, "last.keras"), self.meta)
        if np.isfinite(m) and m > self.best_map:
            self.best_map = m
            save_detector(self.body, os.path.join(self.save_dir, "best.keras"), self.meta)
        elif self.evaluate_fn is None and not os.path.exists(os.path.join(self.save_dir, "best.keras")):
            save_detector(self.body, os.path.join(self.save_dir, "best.keras"), self.meta)
        logs["best_map50"] = self.best_map


class CurvesPlot(keras.callbacks.Callback):
    """Redraws ``curves.png`` (losses and mAP per epoch) from the CSV log after each epoch."""

    def __init__(self, csv_path, png_path):
        super().__init__()
        self.csv_path, self.png_path = csv_path, png_path

    def on_epoch_end(self, epoch, logs=None):
        plot_curves(self.csv_path, self.png_path)


DETECTOR_PANELS = ((("loss", "box_loss", "obj_loss", "cls_loss"), "training loss", None),
                   (("val_map50",), "validation mAP@0.5", (0, 1)))


def read_log_rows(csv_path) -> list[dict]:
    """The rows of a Keras CSVLogger file ([] when there is none yet)."""
    import csv

    if not os.path.isfile(csv_path):
        return []
    with open(csv_path) as f:
        return list(csv.DictReader(f))


def plot_curves(csv_path, png_path, panels=DETECTOR_PANELS):
    """curves.png from log.csv: one panel per ``(keys, title, ylim)``; ``val_*`` keys as points
    (they are missing on epochs without evaluation). The detector's panels by default; the
    classifier (utils.classify) passes its loss and accuracy panels."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_log_rows(csv_path)
    if not rows:
        return

    def col(key):
        out = []
        for r in rows:
            try:
                out.append(float(r.get(key) or "nan"))
            except ValueError:
                out.append(float("nan"))
        return np.array(out)

    epochs = col("epoch") + 1
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4))
    for ax, (keys, title, ylim) in zip(np.atleast_1d(axes), panels):
        for key in keys:
            if key in rows[0]:
                v = col(key)
                ok = np.isfinite(v)
                ax.plot(epochs[ok], v[ok], "o-" if key.startswith("val") else "-", label=key, ms=3)
        ax.set_xlabel("epoch"), ax.set_title(title), ax.grid(alpha=0.3)
        if ylim:
            ax.set_ylim(*ylim)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    with atomic_path(png_path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)
