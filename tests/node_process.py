"""The node as a real process (`denoise-node serve`) for end-to-end tests, with its catalog as a real file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from dicom_denoise_node.store.catalog import Catalog, SeriesState
from tests.peers import LOOPBACK, free_port, stop_process, wait_for_port, wait_until


def write_config(
    path: Path,
    data_dir: Path,
    port: int,
    model: Path | str,
    destinations: list[dict[str, Any]],
    extra: str = "",
    quiet_period_s: float = 1.0,
    log_level: str = "DEBUG",
    node_extra: str = "",
    http_port: int | None = None,
    report: bool = False,
) -> Path:
    """A test node's config. The quality report (an SR series beside the derived one) is off unless a test is
    about it, so PACS ledgers hold the derived images only."""
    dests = "".join(
        f'\n[[destinations]]\nae_title = "{d["ae_title"]}"\nhost = "{d.get("host", LOOPBACK)}"\nport = {d["port"]}\n'
        + (f'name = "{d["name"]}"\n' if "name" in d else "")
        for d in destinations
    )
    path.write_text(
        f"""[node]
ae_title = "DENOISE"
host = "{LOOPBACK}"
port = {port}
data_dir = "{data_dir}"
log_level = "{log_level}"
{"" if "min_free_mb" in node_extra else "min_free_mb = 0"}
{node_extra}

[series]
quiet_period_s = {quiet_period_s}
poll_interval_s = 0.2

[model]
path = "{model}"
device = "cpu"
tile_size = 128
tile_overlap = 16
batch_size = 4

[send]
max_attempts = 3
backoff_s = 0.5
backoff_max_s = 2.0
timeout_s = 20

[http]
host = "{LOOPBACK}"
port = {http_port if http_port is not None else free_port()}

[report]
enabled = {"true" if report else "false"}
{extra}
{dests}"""
    )
    return path


class NodeProcess:
    """Starts `denoise-node serve` in its own process group; logs to a file; always cleaned up."""

    def __init__(self, tmp: Path, model: Path | str, destinations: list[dict[str, Any]], **kw: Any) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.data_dir = tmp / "node-data"
        self.http_port = free_port()
        self.config = write_config(
            tmp / "node.toml", self.data_dir, self.port, model, destinations, http_port=self.http_port, **kw
        )
        self.log_path = tmp / "node.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> NodeProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DENOISE_NODE_")}
        cmd = [sys.executable, "-m", "dicom_denoise_node", "serve", "--config", str(self.config)]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=open(self.log_path, "ab"), env=env, start_new_session=True
        )
        if wait:
            try:
                wait_for_port(self.port, timeout=60, proc=self.proc)
            except (TimeoutError, RuntimeError) as exc:
                self.stop()
                raise RuntimeError(f"node did not start: {exc}\n{self.log()[-3000:]}") from exc
        return self

    def http_get(self, path: str) -> tuple[int, str]:
        """GET from the node's status server: (HTTP status, body); 503 is an answer, not an error."""
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://{LOOPBACK}:{self.http_port}{path}", timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def catalog(self) -> Catalog:
        return Catalog(f"sqlite:///{self.data_dir / 'catalog.sqlite'}")

    def wait_state(self, series_uid: str, state: SeriesState, timeout: float = 120) -> bool:
        cat = self.catalog()
        try:
            return wait_until(lambda: cat.series_state(series_uid) is state, timeout=timeout, interval=0.2)
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
