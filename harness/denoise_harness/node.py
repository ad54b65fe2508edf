"""The node as a real process (`denoise-node serve`), with the one config writer the tests, benchmarks and demo share.

Everything listens on loopback; the catalog is a real SQLite file under the node's data folder; the node runs in
its own process group and logs to a file, and is always stopped by whoever started it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from denoise_harness.net import LOOPBACK, free_port, stop_process, tail_text, wait_for_port, wait_until
from dicom_denoise_node.store.catalog import Catalog, SeriesState


@dataclass
class NodeConfig:
    """A node config on loopback. The defaults are the tests' (fast polls, small tiles, short backoff, the quality
    report off so that PACS ledgers hold the derived images only); ``None`` leaves a key at the node's default."""

    data_dir: Path
    port: int
    model: str
    destinations: list[dict[str, Any]] = field(default_factory=list)
    ae_title: str = "DENOISE"
    device: str = "cpu"
    compile: bool | None = None
    tile: tuple[int, int, int] | None = (128, 16, 4)  # tile_size, tile_overlap, batch_size
    quiet_period_s: float = 1.0
    poll_interval_s: float = 0.2
    log_level: str = "DEBUG"
    min_free_mb: float | None = 0
    http_port: int | None = None  # None = a free port
    max_attempts: int = 3
    backoff_s: float = 0.5
    backoff_max_s: float | None = 2.0
    send_timeout_s: float = 20
    report: bool | None = False
    node_extra: str = ""  # more [node] keys
    series_extra: str = ""  # more [series] keys
    extra: str = ""  # more sections
    header: str = ""

    def render(self) -> str:
        node = [f'ae_title = "{self.ae_title}"', f'host = "{LOOPBACK}"', f"port = {self.port}"]
        node += [f'data_dir = "{self.data_dir}"', f'log_level = "{self.log_level}"']
        if self.min_free_mb is not None and "min_free_mb" not in self.node_extra:
            node.append(f"min_free_mb = {self.min_free_mb:g}")
        model = [f'path = "{self.model}"', f'device = "{self.device}"']
        if self.compile is not None:
            model.append(f"compile = {str(self.compile).lower()}")
        if self.tile is not None:
            model += [f"tile_size = {self.tile[0]}", f"tile_overlap = {self.tile[1]}", f"batch_size = {self.tile[2]}"]
        send = [f"max_attempts = {self.max_attempts}", f"backoff_s = {self.backoff_s}"]
        if self.backoff_max_s is not None:
            send.append(f"backoff_max_s = {self.backoff_max_s}")
        send.append(f"timeout_s = {self.send_timeout_s:g}")
        http_port = self.http_port if self.http_port is not None else free_port()
        sections = [
            ("node", node + ([self.node_extra] if self.node_extra else [])),
            (
                "series",
                [f"quiet_period_s = {self.quiet_period_s}", f"poll_interval_s = {self.poll_interval_s}"]
                + ([self.series_extra] if self.series_extra else []),
            ),  # fmt: skip
            ("model", model),
            ("send", send),
            ("http", [f'host = "{LOOPBACK}"', f"port = {http_port}"]),
        ]
        if self.report is not None:
            sections.append(("report", [f"enabled = {str(self.report).lower()}"]))
        text = self.header + "".join(f"[{name}]\n" + "\n".join(lines) + "\n\n" for name, lines in sections)
        text += self.extra + "\n" if self.extra else ""
        for d in self.destinations:
            text += f'\n[[destinations]]\nae_title = "{d["ae_title"]}"\nhost = "{d.get("host", LOOPBACK)}"\n'
            text += f"port = {d['port']}\n" + (f'name = "{d["name"]}"\n' if "name" in d else "")
            text += d.get("extra", "")  # more of its keys or sub-tables, e.g. "[destinations.tls]\nenabled = true\n"
        return text

    def write(self, path: Path) -> Path:
        path.write_text(self.render(), encoding="utf-8")
        return path


class NodeProcess:
    """`denoise-node serve` on a config written into ``work`` (node.toml, node.log, node-data/ by default)."""

    def __init__(
        self,
        work: Path,
        model: Path | str,
        destinations: list[dict[str, Any]],
        *,
        data_dir: Path | None = None,
        port: int | None = None,
        **config: Any,
    ) -> None:
        self.work = work
        self.port = port or free_port()
        self.data_dir = data_dir or work / "node-data"
        self.http_port = config.pop("http_port", None) or free_port()
        settings = NodeConfig(self.data_dir, self.port, str(model), destinations, http_port=self.http_port, **config)
        self.config = settings.write(work / "node.toml")
        self.log_path = work / "node.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True, timeout: float = 60.0) -> NodeProcess:
        """Start the node; with ``wait``, return once its SCP listens (RuntimeError with the log's tail if not)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("DENOISE_NODE_")}
        cmd = [sys.executable, "-m", "dicom_denoise_node", "serve", "--config", str(self.config)]
        with open(self.log_path, "ab") as logfile:
            self.proc = subprocess.Popen(cmd, stdout=logfile, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        if wait:
            try:
                wait_for_port(self.port, timeout=timeout, proc=self.proc)
            except (TimeoutError, RuntimeError) as exc:
                self.stop()
                raise RuntimeError(f"node did not start: {exc}\n{self.log_tail(40)}") from exc
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def http_get(self, path: str) -> tuple[int, str]:
        """GET from the node's status server: (HTTP status, body); 503 is an answer, not an error."""
        try:
            with urllib.request.urlopen(f"http://{LOOPBACK}:{self.http_port}{path}", timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 15) -> str:
        return tail_text(self.log_path, lines)

    @property
    def catalog_path(self) -> Path:
        return self.data_dir / "catalog.sqlite"

    def catalog(self) -> Catalog:
        return Catalog(f"sqlite:///{self.catalog_path}")

    def wait_state(self, series_uid: str, state: SeriesState, timeout: float = 120) -> bool:
        cat = self.catalog()
        try:
            return wait_until(lambda: cat.views.series_state(series_uid) is state, timeout=timeout, interval=0.2)
        finally:
            cat.close()

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        stop_process(self.proc, timeout=30)
        return self.proc.returncode
