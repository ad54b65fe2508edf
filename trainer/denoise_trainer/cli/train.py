"""`train`: build the training recipe, assemble the catalog's training data, run the loop with a progress bar.

What a physicist reads of a run: a progress bar on a terminal, a plain line every ``log_every`` steps when stdout is
a file or a pipe (a bar prints nothing useful there), warnings on stderr, every log record in RUN_DIR/train.log, and
a closing message that names the checkpoint to export (best.pt when validation chose one) and how to continue.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.logging import RichHandler
from rich.markup import escape

from denoise_trainer.cli.terminal import console, out, progress_bar
from dicom_denoise_node.config import ConfigError

if TYPE_CHECKING:
    from denoise_trainer.data.slices import TrainingData
    from denoise_trainer.train.loop import StepCallback, TrainResult
    from denoise_trainer.train.recipe import TrainConfig


# `--engine fast` is the GPU recipe's set of options on the one loop: slices held and cut on the device, compiled
# networks, fp32 with TF32 (bf16 autocast saturates tanh: the collapse of run 1 in docs/model-card.md).
ENGINES: dict[str, dict[str, object]] = {"standard": {}, "fast": {"feed": "device", "compile": True, "amp": False}}


def run_training(cfg: TrainConfig, data: TrainingData, resume: Path | None, on_step: StepCallback) -> TrainResult:
    """The one training loop: the recipe's pairing picks the objective, its feed the data path."""
    from denoise_trainer.train.loop import train

    return train(cfg, data, resume=resume, on_step=on_step)


def _recipe(preset: str, config: Path | None, overrides: dict[str, object]) -> TrainConfig:
    """The recipe (the warm start's model resolved); a ConfigError for what a user must fix."""
    from denoise_trainer.train.recipe import build_config

    cfg = build_config(preset, config, overrides)
    if not cfg.catalog_url:
        raise ConfigError("no catalog: give --catalog URL or catalog_url in the training config")
    return cfg


def _load(cfg: TrainConfig) -> TrainingData:
    """The recipe's data, read with a progress bar."""
    from denoise_trainer.data.assembly import load_training_data, training_selection

    files = training_selection(cfg.catalog_url, cfg.pairing)
    if files.pairs is not None:
        patients = len({p.patient_id for p in files.pairs})
        out.print(f"paired training: {len(files.pairs)} LD/HD pairs of {patients} patients")
    with progress_bar() as bar:
        task = bar.add_task("loading slices", total=files.slices, info="")
        return load_training_data(files, cfg.catalog_url, cfg.pairing, progress=lambda: bar.advance(task))


@contextmanager
def run_log(run_dir: Path) -> Iterator[Path]:
    """For the command's duration: every record of the trainer and the node (INFO and up) appended to
    RUN_DIR/train.log, warnings and errors also on the console (stderr)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "train.log"
    to_file = logging.FileHandler(path, encoding="utf-8")
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    to_console: logging.Handler = logging.StreamHandler(sys.stderr)  # a file or a pipe: whole lines
    to_console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    if console.is_terminal:
        to_console = RichHandler(console=console, show_path=False, show_time=False)
    to_console.setLevel(logging.WARNING)
    loggers = [logging.getLogger(name) for name in ("denoise_trainer", "dicom_denoise_node")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.INFO)
        logger.addHandler(to_file)
        logger.addHandler(to_console)
    try:
        yield path
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(to_file)
            logger.removeHandler(to_console)
            logger.setLevel(level)
        to_file.close()


# What each criterion's validation score is called (train/selection.py): REF's error, HD's estimate, no reference.
VALIDATION_SCORES = ("val_error_hu", "val_error_est_hu", "val_score_hu")


def _step_info(cfg: TrainConfig, epoch: int, losses: dict[str, float]) -> str:
    info = f"epoch {epoch + 1}/{cfg.epochs} G {losses['g_total']:.3f}"
    if "g_cycle" in losses:
        info += f" cyc {losses['g_cycle']:.3f} D {losses['d_ld'] + losses['d_hd']:.3f}"
    for key in VALIDATION_SCORES:
        if key in losses:
            info += f" val {losses[key]:.2f} HU"
            break
    if "val_lesion_kept" in losses:
        info += f" lesions kept {losses['val_lesion_kept']:.2f}"
    if "samples_per_s" in losses:
        info += f" {losses['samples_per_s']:.1f} samples/s"
    return info


def train(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Training TOML ([train] table).")] = None,
    preset: Annotated[str, typer.Option(help="method (the paper's settings), cpu, or tiny.")] = "cpu",
    catalog: Annotated[str | None, typer.Option(help="Archive catalog URL (overrides the config).")] = None,
    run_dir: Annotated[Path | None, typer.Option(help="Checkpoints, TensorBoard logs and samples go here.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Override the preset's epochs.")] = None,
    iters_per_epoch: Annotated[int | None, typer.Option(help="Override iterations per epoch.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop (with a checkpoint) after this many steps.")] = None,
    max_minutes: Annotated[
        float | None,
        typer.Option(help="Stop (with a checkpoint) this many minutes after the first step; --resume continues."),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Training seed.")] = None,
    resume: Annotated[
        Path | None, typer.Option(help="Checkpoint to continue from, exactly (e.g. RUN_DIR/checkpoints/last.pt).")
    ] = None,
    pairing: Annotated[
        str | None, typer.Option(help="unpaired (the method's CycleGAN) or paired (LD/HD pairs, Noise2Noise).")
    ] = None,
    engine: Annotated[
        str, typer.Option(help="standard, or fast: feed = device, compile, no autocast (the GPU recipe; one device).")
    ] = "standard",
    init: Annotated[
        str | None,
        typer.Option(
            help="Fine-tune from a model: a model .json, a bundled model's name, or 'bundled' (the bundled model of "
            "the run's pairing). The recipe takes the model's architecture and HU window where the config does not "
            "set them."
        ),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="CPU threads for torch. Default: OMP_NUM_THREADS if set, else min(CPUs, 4). On a machine busy "
            "with other work give fewer (e.g. 1 on a busy 2-core machine): competing threads slow every step.",
        ),
    ] = None,
    log_every: Annotated[
        int | None,
        typer.Option(min=1, help="Steps between log records, and between progress lines when stdout is no terminal."),
    ] = None,
) -> None:
    """Train the CycleGAN of the method, or the paired model, on the catalog's training split (torchrun for several
    GPUs or nodes). SIGTERM or Ctrl-C (SIGINT) finishes the current step, writes a checkpoint and last.pt, and exits
    (128 + the signal's number); a second signal aborts at once. `--resume RUN_DIR/checkpoints/last.pt` continues.

    Example: `denoise-node train --catalog sqlite:///data/archive.sqlite --run-dir runs/site --init bundled
    --max-minutes 30`
    """
    from denoise_trainer.train.recipe import CannotTrain

    overrides: dict[str, object] = dict(
        catalog_url=catalog,
        run_dir=run_dir,
        device=device,
        epochs=epochs,
        iters_per_epoch=iters_per_epoch,
        max_steps=max_steps,
        max_minutes=max_minutes,
        seed=seed,
        pairing=pairing,
        init_from=init,
        log_every=log_every,
    )
    if engine not in ENGINES:
        console.print(f"[bold red]error:[/] --engine {escape(engine)}: choose one of {', '.join(ENGINES)}")
        raise typer.Exit(2)
    overrides.update(ENGINES[engine])
    try:
        cfg = _recipe(preset, config, overrides)
    except (ConfigError, CannotTrain) as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    result = _run(cfg, threads, resume)
    _report(result, Path(cfg.run_dir))
    if result.stopped.startswith("SIG"):
        raise typer.Exit(128 + int(signal.Signals[result.stopped]))


def _run(cfg: TrainConfig, threads: int | None, resume: Path | None) -> TrainResult:
    """Threads, data and the loop, logged to RUN_DIR/train.log; exit 1 on a collapse, 2 on what a user must fix."""
    from denoise_trainer.train.loop import TrainingCollapsed
    from denoise_trainer.train.recipe import CannotTrain
    from denoise_trainer.train.threads import set_threads

    with run_log(Path(cfg.run_dir)):
        used, why = set_threads(threads)
        console.print(f"torch threads: {used} ({why}); a machine busy with other work runs faster with fewer")
        if cfg.init_from is not None:
            console.print(f"fine-tuning from {cfg.init_from}")
        data = _load(cfg)
        try:
            return _train_with_progress(cfg, data, resume)
        except TrainingCollapsed as exc:
            console.print(f"[bold red]training stopped:[/] {escape(str(exc))}")
            raise typer.Exit(1) from exc
        except (ConfigError, CannotTrain) as exc:
            console.print(f"[bold red]error:[/] {escape(str(exc))}")
            raise typer.Exit(2) from exc


def _train_with_progress(cfg: TrainConfig, data: TrainingData, resume: Path | None) -> TrainResult:
    """The loop under a progress bar, and a plain line every ``log_every`` steps when stdout is no terminal."""
    from denoise_trainer.train.loop import iterations_per_epoch

    total = cfg.max_steps or cfg.epochs * iterations_per_epoch(cfg, len(data.ld))
    plain = not out.is_terminal
    with progress_bar() as bar:
        task = bar.add_task("training", total=total, info="")
        started = time.monotonic()

        def on_step(step: int, epoch: int, losses: dict[str, float]) -> None:
            info = _step_info(cfg, epoch, losses)
            bar.update(task, completed=step, info=info)
            if plain and (step % cfg.log_every == 0 or step == 1 or any(k in losses for k in VALIDATION_SCORES)):
                minutes = (time.monotonic() - started) / 60
                out.print(f"step {step}/{total} {info} {minutes:.1f} min", markup=False, highlight=False)

        return run_training(cfg, data, resume, on_step)


STOPS = {"max_steps": "--max-steps reached", "max_minutes": "--max-minutes reached"}


def _report(result: TrainResult, run_dir: Path) -> None:
    from denoise_trainer.train.checkpoint import load_checkpoint

    why = STOPS.get(result.stopped, f"stopped by {result.stopped}" if result.stopped else "")
    out.print(
        f"trained {result.steps} steps ({result.epochs_done} epochs{'; ' + why if why else ''}); "
        f"last checkpoint: {result.checkpoint}"
    )
    if result.best_checkpoint is not None:
        state = load_checkpoint(result.best_checkpoint)
        step, selection = state.get("step"), state.get("selection", {})
        best = next((r for r in result.validation if r.get("step") == step), {})
        key = selection.get("score", "val_error_hu")
        figures = [f"{key} {best[key]:.2f}"] if key in best else []
        figures += [f"{best['val_error_vs_hd']:.3f} × HD's error"] if "val_error_vs_hd" in best else []
        figures += [f"lesions kept {best['val_lesion_kept']:.2f}"] if "val_lesion_kept" in best else []
        criterion = selection.get("criterion", "ref")
        out.print(f"best.pt, chosen on the validation patients by {criterion}: step {step}; " + ", ".join(figures))
    chosen = result.best_checkpoint or result.checkpoint
    out.print(f"export it with: denoise-node model export {chosen} --name NAME --version VERSION")
    if result.stopped in ("max_minutes", "SIGTERM", "SIGINT"):
        last = run_dir / "checkpoints" / "last.pt"
        out.print(f"to continue: the same command with --resume {last}")
