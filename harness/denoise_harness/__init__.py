"""The real peers, the node runner and the config writer shared by the tests, the benchmarks and the demo.

One module per peer: net.py (programs, loopback ports, bounded waits, child processes), files.py (test CT series),
dcmtk.py (storescu, echoscu, storescp), orthanc.py (Orthanc as the PACS), postgres.py (a throw-away PostgreSQL
server), node.py (`denoise-node serve` and its config). The names below are re-exported so that
``import denoise_harness as peers`` reads well at the call site.
"""

from denoise_harness.dcmtk import StoreSCP, echoscu, file_syntax_profile, storescu
from denoise_harness.files import j2k_noise_slice, sop_instance_uid, write_ct_series
from denoise_harness.net import (
    LOOPBACK,
    ChildProcess,
    PeakWatch,
    PeerMissing,
    StrPath,
    find_program,
    free_port,
    listens,
    peer_env,
    pid_alive,
    port_open,
    require,
    stop_process,
    tail_text,
    wait_for_port,
    wait_until,
)
from denoise_harness.orthanc import Modality, Orthanc, OrthancHTTPError
from denoise_harness.postgres import PostgresServer

__all__ = [
    "LOOPBACK",
    "ChildProcess",
    "Modality",
    "Orthanc",
    "OrthancHTTPError",
    "PeerMissing",
    "PostgresServer",
    "StoreSCP",
    "StrPath",
    "echoscu",
    "file_syntax_profile",
    "find_program",
    "free_port",
    "listens",
    "peer_env",
    "pid_alive",
    "port_open",
    "require",
    "sop_instance_uid",
    "stop_process",
    "storescu",
    "tail_text",
    "wait_for_port",
    "PeakWatch",
    "wait_until",
    "write_ct_series",
    "j2k_noise_slice",
]
