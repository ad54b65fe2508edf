"""A real `denoise-node serve` for the benchmarks: a throwaway model of a given width, a config, a process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from demo import peers
from demo.driver import NodeRunner, write_node_config
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
) -> Iterator[NodeRunner]:
    """Start the node (its own process group) and always stop it; the node's log is work/node.log."""
    work.mkdir(parents=True, exist_ok=True)
    port = peers.free_port()
    config = write_node_config(
        work / "node.toml",
        work / "node",
        port,
        pacs_port,
        str(model),
        device,
        quiet_period_s=quiet_period_s,
        compile=compile,
    )
    node = NodeRunner(config, work / "node.log", port)
    node.start()
    try:
        yield node
    finally:
        node.stop()
