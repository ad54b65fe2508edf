"""The catalog: every received instance, every series and its state, every derived instance and delivery.

The catalog and the spool are the only interface between stages; state lives here, never in module globals or
directory timestamps. ``Catalog(url)`` owns the database (``catalog.db``: engine, sessions, transactions) and one
object per concern, so that a call says where its method lives (``catalog.queue.claim_for_processing()``):

- schema.py: the tables and the series states; archive.py: the training archive's table;
- engine.py: engine, sessions, ``transaction()``, and the read-only opener (``open_readonly``) that never migrates;
  only ``Catalog(url)`` (`serve`, `migrate`) creates or migrates, ``Catalog(url, migrate=False)`` never does;
- intake.py (``catalog.intake``): record a received instance (①);
- completion.py (``catalog.completion``): routing decisions and RECEIVING → COMPLETE (②);
- queue.py (``catalog.queue``): the processing claims (owner and lease) and their transitions (③);
- recovery.py (``catalog.recovery``): retry, recovery after a restart, other nodes' live claims;
- deliveries.py (``catalog.deliveries``): sending (④): the lease, each destination's acknowledgement, SENT or
  backoff and FAILED;
- derivations.py (``catalog.derivations``): each derivation of a source series and its numbering variant;
- forwards.py (``catalog.forwards``): received series passed on unchanged, their retry state;
- housekeeping.py (``catalog.housekeeping``): spool rows and purges (the spool check, retention);
- views.py (``catalog.views``): status, counts, progress;
- quality.py (``catalog.quality``): each processing run's guard and noise figures;
- notifications.py (``catalog.notifications``): events to announce and their delivery (ops/notify.py).

The association audit's rows are written and read by receive/audit.py.
"""

from __future__ import annotations

from dicom_denoise_node.store.catalog.archive import Split
from dicom_denoise_node.store.catalog.completion import Completion
from dicom_denoise_node.store.catalog.deliveries import Deliveries
from dicom_denoise_node.store.catalog.derivations import Derivation, Derivations
from dicom_denoise_node.store.catalog.engine import CatalogEngine, ReadOnlyEngine, SessionSource
from dicom_denoise_node.store.catalog.forwards import Forward, ForwardClaim, Forwards
from dicom_denoise_node.store.catalog.housekeeping import Housekeeping
from dicom_denoise_node.store.catalog.intake import InstanceMeta, Intake, SeriesBeingPurged
from dicom_denoise_node.store.catalog.notifications import Notification, Notifications
from dicom_denoise_node.store.catalog.quality import Quality, QualityRecord, QualitySummary
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
    "Derivation",
    "DerivedInstance",
    "DerivedRecord",
    "Forward",
    "ForwardClaim",
    "Instance",
    "InstanceDelivery",
    "InstanceMeta",
    "Notification",
    "Patient",
    "QualityRecord",
    "QualitySummary",
    "ReadOnlyCatalog",
    "Series",
    "SeriesState",
    "SessionSource",
    "Split",
    "Study",
    "open_readonly",
    "SeriesBeingPurged",
    "utcnow",
]


class Catalog:
    """The writable catalog the node and the trainer open: ``Catalog(url)`` creates and migrates the database (`serve`,
    `migrate`, the trainer's archive); ``Catalog(url, migrate=False)`` opens an existing one at this code's schema or
    raises a ``SchemaMismatch`` (every other command). Its concerns are components that share the one engine
    (``catalog.db``) and nothing else."""

    def __init__(self, url: str, node_id: str | None = None, migrate: bool = True) -> None:
        self.db = CatalogEngine(url, node_id, migrate)
        self.intake = Intake(self.db)
        self.completion = Completion(self.db)
        self.queue = Queue(self.db)
        self.recovery = Recovery(self.db)
        self.deliveries = Deliveries(self.db)
        self.derivations = Derivations(self.db)
        self.forwards = Forwards(self.db)
        self.housekeeping = Housekeeping(self.db)
        self.views = Views(self.db)
        self.quality = Quality(self.db)
        self.notifications = Notifications(self.db)

    def close(self) -> None:
        """Release the database's connections."""
        self.db.close()


class ReadOnlyCatalog:
    """The views of a catalog another process writes (``reader.views``; ``reader.db`` for sessions)."""

    def __init__(self, url: str, require_schema: bool = False) -> None:
        self.db = ReadOnlyEngine(url, require_schema)
        self.views = Views(self.db)

    def close(self) -> None:
        """Release the database's connections."""
        self.db.close()


def open_readonly(url: str, require_schema: bool = False) -> ReadOnlyCatalog:
    """Open a catalog for reading only: no file is created, nothing is migrated, nothing can be written. With
    ``require_schema``, a missing catalog or one at another schema revision raises a ``SchemaMismatch``."""
    return ReadOnlyCatalog(url, require_schema)
