"""The catalog: every received instance, every series and its state, every derived instance and delivery.

The catalog and the spool are the only interface between stages; state lives here, never in module globals or
directory timestamps. One module per concern:

- schema.py: the tables and the series states; archive.py: the training archive's table;
- engine.py: engine, sessions, ``transaction()``, and the read-only opener (``open_readonly``) that never migrates;
- intake.py: record a received instance (①);
- completion.py: routing decisions and RECEIVING → COMPLETE (②);
- queue.py: the processing claims (owner and lease) and their transitions (③);
- recovery.py: retry, recovery after a restart, other nodes' live claims;
- deliveries.py: sending (④): the lease, each destination's acknowledgement, SENT or backoff and FAILED;
- housekeeping.py: spool rows and purges (the spool check, retention);
- views.py: status, counts, progress.

The association audit's rows are written and read by receive/audit.py.
"""

from __future__ import annotations

from dicom_denoise_node.store.catalog.archive import Split
from dicom_denoise_node.store.catalog.completion import Completion
from dicom_denoise_node.store.catalog.deliveries import Deliveries
from dicom_denoise_node.store.catalog.engine import CatalogEngine, ReadOnlyEngine
from dicom_denoise_node.store.catalog.housekeeping import Housekeeping
from dicom_denoise_node.store.catalog.intake import InstanceMeta, Intake, SeriesBeingPurged
from dicom_denoise_node.store.catalog.queue import Claim, DerivedRecord, Queue
from dicom_denoise_node.store.catalog.recovery import Recovery
from dicom_denoise_node.store.catalog.schema import (
    REPORT_SOURCE,
    Association,
    Base,
    Delivery,
    DerivedInstance,
    Instance,
    InstanceDelivery,
    Patient,
    Series,
    SeriesState,
    Study,
    utcnow,
)
from dicom_denoise_node.store.catalog.views import Views

__all__ = [
    "REPORT_SOURCE",
    "Association",
    "Base",
    "Catalog",
    "CatalogEngine",
    "Claim",
    "Delivery",
    "DerivedInstance",
    "DerivedRecord",
    "Instance",
    "InstanceDelivery",
    "InstanceMeta",
    "Patient",
    "ReadOnlyCatalog",
    "Series",
    "SeriesState",
    "Split",
    "Study",
    "open_readonly",
    "SeriesBeingPurged",
    "utcnow",
]


class Catalog(Intake, Completion, Queue, Recovery, Deliveries, Housekeeping, Views):
    """The writable catalog the node and the trainer open: ``Catalog(url)`` migrates the database, then records,
    claims, purges and reports."""


class ReadOnlyCatalog(Views, ReadOnlyEngine):
    """The views of a catalog another process writes."""


def open_readonly(url: str) -> ReadOnlyCatalog:
    """Open a catalog for reading only: no file is created, nothing is migrated, nothing can be written."""
    return ReadOnlyCatalog(url)
