"""A real `denoise-node serve` for the benchmarks: a throwaway model of a given width, a config, a process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

import denoise_harness as peers
from denoise_demo.driver import demo_node
from denoise_harness.node import NodeProcess
from dicom_denoise_node.model.generator import GeneratorConfig, ResnetGenerator
from dicom_denoise_node.model.registry import save_model


def random_model(directory: Path, filters: int = 32, blocks: int = 6, residual: bool = True) -> Path:
    """A randomly initialised generator of the bundled model's shape: the arithmetic, not the weights, sets the time."""
    torch.manual_seed(0)
    gen = ResnetGenerator(GeneratorConfig(filters=filters, blocks=blocks, residual=residual))
    info = save_model(gen, directory, "bench-random", "0.0.0-bench", (-400.0, 400.0), training={"note": "untrained"})
    return info.weights_path.with_suffix(".json")


@contextmanager
def running_node(
    work: Path,
    model: Path,
    pacs_port: int,
    quiet_period_s: float = 3600.0,
    device: str = "cpu",
    compile: bool = False,
) -> Iterator[NodeProcess]:
    """Start the node (its own process group) and always stop it; the node's log is work/node.log."""
    work.mkdir(parents=True, exist_ok=True)
    port = peers.free_port()
    node = demo_node(
        work, work / "node", port, pacs_port, str(model), device, quiet_period_s=quiet_period_s, compile=compile
    )
    node.start(timeout=180.0)
    try:
        yield node
    finally:
        node.stop()
