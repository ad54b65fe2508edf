"""The one training loop, top to bottom: set-up, resume, then steps, logs, validation, samples, checkpoints.

One loop for every objective (a ``Step``: the CycleGAN of the method, or the paired model) and every data path (a
``Feed``: patches cut on the host, or on the device). What is written once here: the device and DistributedDataParallel
(several GPUs or nodes under ``torchrun``: NCCL on CUDA, gloo on CPU), mixed precision, the discriminators' warm-up,
the weight average (EMA), validation (against REF, HD or no reference: train/selection.py) and the best checkpoint,
the collapse check, logs and TensorBoard, sample montages, checkpoints and exact resume (models, optimisers,
schedules, pools and every RNG, so a resumed run takes exactly the steps the uninterrupted run would have taken).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from denoise_trainer.data.patches import paired_patches
from denoise_trainer.data.slices import TrainingData, noise_maps
from denoise_trainer.train.averaging import GeneratorAverage
from denoise_trainer.train.checkpoint import checkpoint_header, load_for_resume, write_checkpoint
from denoise_trainer.train.cyclegan_step import CycleGANStep
from denoise_trainer.train.feeds import make_feed
from denoise_trainer.train.paired_step import PairedStep
from denoise_trainer.train.recipe import CannotTrain, TrainConfig
from denoise_trainer.train.selection import validation_set
from denoise_trainer.train.step import Step, StepTools
from denoise_trainer.train.stopping import MAX_MINUTES, StopRequests, agreed_reason
from denoise_trainer.train.validation import Validator
from denoise_trainer.train.warm_start import warm_start

log = logging.getLogger(__name__)

COLLAPSE_STD = 1e-3  # [-1, 1] units: ~2 HU over a whole batch of body patches
COLLAPSE_STEPS = 50
LESION_KEPT_WARNING = 0.9  # median contrast kept of the inserted validation lesions below which a run warns
LAST = "last.pt"


class TrainingCollapsed(RuntimeError):
    """The generator stopped producing images (GAN collapse); the run stops with the reason."""


@dataclass
class TrainResult:
    steps: int
    epochs_done: int
    checkpoint: Path | None
    history: list[dict[str, float]]
    validation: list[dict[str, float]] = field(default_factory=list)
    best_checkpoint: Path | None = None
    generator: dict[str, torch.Tensor] = field(default_factory=dict)  # final LD→HD weights of this rank
    stopped: str = ""  # why it stopped before its last epoch: max_steps, max_minutes, SIGTERM or SIGINT


StepCallback = Callable[[int, int, dict[str, float]], None]
OBJECTIVES: dict[str, type[CycleGANStep] | type[PairedStep]] = {"unpaired": CycleGANStep, "paired": PairedStep}


def distributed_rank() -> tuple[int, int, int]:
    """(rank, local rank, world size) from torchrun's environment; (0, 0, 1) for a plain process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world


def training_device(requested: str, local_rank: int) -> torch.device:
    """The device a training run asked for ("auto": CUDA when there is one); an error when CUDA is asked but absent."""
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but no CUDA device is available")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def iterations_per_epoch(cfg: TrainConfig, n_ld_slices: int, world: int = 1) -> int:
    if cfg.iters_per_epoch:
        return cfg.iters_per_epoch
    return max(1, (n_ld_slices * cfg.patches_per_slice) // (cfg.batch_size * world))


def check_combination(cfg: TrainConfig, world: int) -> None:
    """Refuse, with the reason, the combinations of objective, feed and processes that cannot run."""
    if world > 1 and cfg.lambda_lesion > 0:
        raise CannotTrain("lambda_lesion runs the LD→HD generator outside DistributedDataParallel: train on one device")
    if world > 1 and cfg.feed == "device":
        raise CannotTrain("feed = 'device' runs on one device; use feed = 'host' for several processes (torchrun)")


def train(
    cfg: TrainConfig, data: TrainingData, resume: Path | None = None, on_step: StepCallback | None = None
) -> TrainResult:
    """Train (or continue training) the configured objective; returns the last checkpoint and the loss history."""
    run = TrainingRun(cfg, data)
    if resume is not None:
        run.resume(resume)
    return run.run(on_step)


class TrainingRun:
    """One run's state: the objective, the feed, the average, the validator, the position and the history."""

    def __init__(self, cfg: TrainConfig, data: TrainingData) -> None:
        self.rank, local_rank, self.world = distributed_rank()
        check_combination(cfg, self.world)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if cfg.device != "cpu" and torch.cuda.is_available() else "gloo")
        self.device = device = training_device(cfg.device, local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = cfg.feed == "device"  # fixed shapes: let cuDNN pick its fastest kernels
        self.cfg, self.data, self.main = cfg, data, self.rank == 0
        self.run_dir = Path(cfg.run_dir)
        (self.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        self.best_path = self.run_dir / "checkpoints" / "best.pt"
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.feed = make_feed(cfg, data.ld, data.hd, device, self.rank)
        self.step_fn: Step = OBJECTIVES[cfg.pairing](cfg, device, self.feed)
        warm_start(self.step_fn.generator, cfg)  # a resumed run's checkpoint then replaces these weights
        self.lesion_rng = torch.Generator().manual_seed(cfg.seed * 1000 + 900 + self.rank)
        self.per_epoch = iterations_per_epoch(cfg, len(data.ld), self.world)
        use_amp = cfg.amp and device.type == "cuda"
        amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
        autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if use_amp else nullcontext
        self.tools = StepTools(autocast, self.scaler, self.lesion_rng)
        self.epoch, self.iteration, self.step = 0, 0, 0
        self._final_step = 0  # the run's last step, validated whatever val_every says (set by _steps)
        self.history: list[dict[str, float]] = []
        self._state: dict[str, Any] | None = None  # the checkpoint being resumed, until the average is built

    def resume(self, path: Path) -> None:
        """Continue a checkpoint exactly: the objective's state, the feed's and every other RNG, the position."""
        state = load_for_resume(path, self.cfg)
        self.step_fn.load_state_dict(state, self.device)
        self.feed.load_state_dict(state, self.rank)
        torch.set_rng_state(state["torch_rng"])
        if "lesion_rng" in state:
            self.lesion_rng.set_state(state["lesion_rng"])
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.iteration, self.step = state["epoch"], state["iteration"], state["step"]
        self._state = state
        if self.main:
            log.info("resumed from %s at epoch %d, iteration %d, step %d", path, self.epoch, self.iteration, self.step)

    def _prepare(self) -> None:
        """What follows the (possibly resumed) weights: the average, DDP, compile, TensorBoard, validation."""
        cfg, data, window = self.cfg, self.data, (self.cfg.hu_min, self.cfg.hu_max)
        self.average = GeneratorAverage(self.step_fn.generator, cfg.ema_decay)
        if self._state is not None:
            self.average.load_state_dict(self._state)
        if self.world > 1:
            self.step_fn.distribute(self.device)
        if cfg.compile:
            self.step_fn.compile()
        self.writer = None
        if self.main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        self.samples = None
        if self.main and data.val_ld and data.val_hd:
            maps = noise_maps(data.val_ld, window) if cfg.noise_conditioning else None
            self.samples = paired_patches(
                data.val_ld, data.val_hd, cfg.val_patches, cfg.patch_size, window, cfg.seed, maps
            )
        val_set = validation_set(data, cfg) if self.main else None  # REF, HD pairs or no reference
        self.validator = Validator(val_set, window, self.device, cfg.val_every, self.writer, cfg.val_min_lesion_kept)
        if self._state is not None:
            self.validator.load_state_dict(self._state)
        self._state = None

    def save(self, name: str) -> Path:
        """A checkpoint of the whole run (every rank takes part in gathering the RNGs; rank 0 writes)."""
        path = self.run_dir / "checkpoints" / name
        cfg, arch = self.cfg, self.cfg.generator_config().to_dict()
        description = {**self.data.description, **({"feed": cfg.feed} if cfg.feed != "host" else {})}
        state = {
            **checkpoint_header(cfg, arch, description, self.epoch, self.iteration, self.step, self.world),
            "last_losses": self.history[-1] if self.history else {},
            **self.validator.state_dict(),
            **self.step_fn.state_dict(),
            **self.average.state_dict(),
            **self.feed.state_dict(self.world),
            "torch_rng": torch.get_rng_state(),
            "lesion_rng": self.lesion_rng.get_state(),
            "scaler": self.scaler.state_dict(),
        }
        if self.main:
            write_checkpoint(state, path, also_last=name not in (self.best_path.name, LAST))
        return path

    def run(self, on_step: StepCallback | None = None) -> TrainResult:
        """Steps until the last epoch, ``max_steps``, ``max_minutes`` or SIGTERM/SIGINT (train/stopping.py); a
        checkpoint at each epoch's end, last.pt every ``checkpoint_every`` steps, and a checkpoint at the stop."""
        self._prepare()
        with StopRequests(self.cfg.max_minutes) as stops:
            checkpoint, stopped = self._steps(stops, on_step)
        if self.writer is not None:
            self.writer.close()
        self.validator.write(self.run_dir / "validation.json")
        best = self.best_path if self.best_path.exists() else None
        model = self.average.model
        return TrainResult(
            self.step, self.epoch, checkpoint, self.history, self.validator.curve, best, model.state_dict(), stopped
        )

    def _steps(self, stops: StopRequests, on_step: StepCallback | None) -> tuple[Path | None, str]:
        """The steps themselves; returns the last checkpoint written and why the run stopped ("" = its end)."""
        cfg, checkpoint, stopped = self.cfg, None, ""
        self._clock, self._samples_seen, self._collapsed = time.perf_counter(), 0, 0
        pending: list[tuple[int, int, dict[str, torch.Tensor]]] = []
        self._final_step = 0
        stops.start_clock()
        while self.epoch < cfg.epochs and not stopped:
            while self.iteration < self.per_epoch:
                pending.append((self.step + 1, self.epoch, self._one_step()))
                self.iteration += 1
                self.step += 1
                stopped = self._stop_reason(stops)
                last = bool(stopped) or self.iteration >= self.per_epoch
                if stopped or (self.iteration >= self.per_epoch and self.epoch == cfg.epochs - 1):
                    self._final_step = self.step  # the run's last step is validated too: it may be the best
                periodic = not last and bool(cfg.checkpoint_every) and self.step % cfg.checkpoint_every == 0
                if not self.feed.defer_sync or last or periodic or self._due(self.step):
                    for step, epoch, losses in pending:
                        self._record(step, epoch, losses, on_step)
                    pending = []
                if periodic:
                    self.save(LAST)  # what a hard kill loses: at most checkpoint_every steps
                if stopped:
                    break
            if self.iteration >= self.per_epoch:
                self.epoch, self.iteration = self.epoch + 1, 0
                self.step_fn.end_epoch()
                checkpoint = self.save(f"epoch-{self.epoch:03d}.pt")
            else:
                checkpoint = self.save(f"step-{self.step:07d}.pt")
        return checkpoint, stopped

    def _stop_reason(self, stops: StopRequests) -> str:
        """Why to stop after this step ("" = go on); the same on every rank. A signal or the time cap is logged."""
        if self.cfg.max_steps and self.step >= self.cfg.max_steps:
            return "max_steps"
        reason = agreed_reason(stops.reason(), self.world, self.device)
        if reason and self.main:
            what = f"{self.cfg.max_minutes:g} minutes reached" if reason == MAX_MINUTES else f"{reason} received"
            abort = "" if reason == MAX_MINUTES else " (a second signal aborts at once)"
            log.warning("%s: stopping after step %d with a checkpoint%s", what, self.step, abort)
        return reason

    def _on_every_rank(self, flag: bool) -> bool:
        """Rank 0's flag on every rank. Why: only rank 0 validates, but a checkpoint gathers every rank's RNG, so
        every rank must take part in saving best.pt (else rank 0 waits in that gather for ever)."""
        if self.world == 1:
            return flag
        value = torch.tensor([int(flag)], device=self.device)
        dist.broadcast(value, src=0)
        return bool(value.item())

    def _one_step(self) -> dict[str, torch.Tensor]:
        """One batch through the objective; the losses stay on the device until recorded."""
        ld, hd = self.feed.next()
        train_generator = not (self.step_fn.warms_up and self.step < self.cfg.d_warmup_steps)
        losses, fake = self.step_fn(ld, hd, train_generator, self.tools)
        if train_generator:
            self.average.update()
        self._samples_seen += self.cfg.batch_size * self.world
        return {**{k: v.detach() for k, v in losses.items()}, "_std": fake.float().std()}

    def _due(self, step: int) -> bool:
        """A step whose losses are needed on the host now: logged, validated or sampled."""
        cfg = self.cfg
        return step % cfg.log_every == 0 or step == 1 or step % cfg.val_every == 0 or step % cfg.sample_every == 0

    def _record(self, step: int, epoch: int, tensors: dict[str, torch.Tensor], on_step: StepCallback | None) -> None:
        """Losses to the host, the collapse check, history, logs, validation (best.pt), samples, the callback."""
        cfg = self.cfg
        std = float(tensors.pop("_std"))
        losses = {k: float(v) for k, v in tensors.items()}
        losses["lr"] = self.step_fn.lr()
        # A generator whose output no longer varies has collapsed (saturated tanh): say so instead of going on.
        self._collapsed = self._collapsed + 1 if std < COLLAPSE_STD else 0
        if self._collapsed >= COLLAPSE_STEPS:
            raise TrainingCollapsed(
                f"generator output collapsed (std < {COLLAPSE_STD} for {COLLAPSE_STEPS} steps) at step {step}; "
                f"last losses {losses}; checkpoints so far are in {self.run_dir / 'checkpoints'}"
            )
        self.history.append(losses)
        if self.main and (step % cfg.log_every == 0 or step == 1):
            elapsed = time.perf_counter() - self._clock
            losses["samples_per_s"] = self._samples_seen / elapsed if elapsed > 0 else 0.0
            self._clock, self._samples_seen = time.perf_counter(), 0
            if self.writer is not None:
                for k, v in losses.items():
                    self.writer.add_scalar(f"train/{k}", v, step)
        if self._on_every_rank(self.validator(step, self.average.model, losses, force=step == self._final_step)):
            self.save(self.best_path.name)
        kept = losses.get("val_lesion_kept")
        if self.main and kept is not None and kept < LESION_KEPT_WARNING:
            log.warning(
                "step %d: the validation lesions keep %.2f of their contrast (< %.1f): the model is flattening faint "
                "lesions; consider lambda_lesion or val_min_lesion_kept in the recipe",
                step,
                kept,
                LESION_KEPT_WARNING,
            )
        if self.samples is not None and step % cfg.sample_every == 0:
            save_samples(self.run_dir, step, self.average.model, *self.samples, self.device)
        if on_step is not None and self.main:
            on_step(step, epoch, losses)


@torch.inference_mode()
def save_samples(
    run_dir: Path, step: int, generator: torch.nn.Module, ld: torch.Tensor, hd: torch.Tensor, device: torch.device
) -> None:
    """LD | output | HD montage of fixed validation patches (run_dir/samples/step-N.png)."""
    from denoise_trainer.evaluate.montage import patch_montage

    was_training = generator.training
    generator.eval()
    fake = generator(ld.to(device)).float().cpu()
    generator.train(was_training)
    rows = [[ld[i, 0].numpy(), fake[i, 0].numpy(), hd[i, 0].numpy()] for i in range(ld.shape[0])]
    out = run_dir / "samples" / f"step-{step:07d}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    patch_montage(out, rows)
