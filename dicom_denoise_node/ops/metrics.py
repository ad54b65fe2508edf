"""Prometheus metrics of the node (prometheus-client), on a registry of its own.

Counters and the histogram are updated where things happen (receive, process, send); the series-per-state
gauges, the queue depth and the free disk space are read from the catalog and the file system at scrape time, so
they are right after a restart too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, Info, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from dicom_denoise_node.store.catalog import Catalog

log = logging.getLogger(__name__)

PREFIX = "denoise_node"


class _CatalogCollector(Collector):
    def __init__(self, catalog: Catalog, free_bytes: Callable[[], float]) -> None:
        self.catalog = catalog
        self.free_bytes = free_bytes

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        series = GaugeMetricFamily(f"{PREFIX}_series", "Received series in the catalog, by state", labels=["state"])
        try:
            counts = self.catalog.views.state_counts()
            queue = self.catalog.views.pending_series()
        except Exception:
            log.exception("metrics: catalog unreadable")
            counts, queue = {}, -1
        for state, n in sorted(counts.items()):
            series.add_metric([state], n)
        yield series
        yield GaugeMetricFamily(
            f"{PREFIX}_queue_depth", "Series received but not yet denoised (RECEIVING, COMPLETE, PROCESSING)", queue
        )
        yield GaugeMetricFamily(f"{PREFIX}_disk_free_bytes", "Free space under data_dir", self.free_bytes())
        stats = self.catalog.intake.instance_commits
        yield CounterMetricFamily(
            f"{PREFIX}_catalog_instance_commits",
            "Catalog transactions that recorded received instances (fewer than the records when stores overlap)",
            stats.batches,
        )
        yield CounterMetricFamily(
            f"{PREFIX}_catalog_instance_records", "Received instances recorded in the catalog", stats.items
        )


class NodeMetrics:
    """Everything /metrics exposes."""

    def __init__(self, catalog: Catalog, free_bytes: Callable[[], float]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.instances_received = Counter(
            f"{PREFIX}_instances_received", "C-STORE requests answered by the SCP, by status", ["status"], registry=r
        )
        self.associations = Counter(
            f"{PREFIX}_associations", "Associations requested, by result (accepted, rejected)", ["result"], registry=r
        )
        self.series_processed = Counter(
            f"{PREFIX}_series_processed", "Series the worker finished, by outcome", ["outcome"], registry=r
        )
        self.slices_flagged = Counter(
            f"{PREFIX}_slices_flagged", "Denoised slices the consistency guard flagged", registry=r
        )
        self.instances_sent = Counter(
            f"{PREFIX}_instances_sent", "Derived instances acknowledged by a destination", ["destination"], registry=r
        )
        self.send_failures = Counter(
            f"{PREFIX}_send_failures", "Failed attempts to send a series to a destination", ["destination"], registry=r
        )
        self.inference_seconds_per_slice = Histogram(
            f"{PREFIX}_inference_seconds_per_slice",
            "Generator time per slice of each denoised series (tiles, batches and blending included)",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.series_latency = Histogram(
            f"{PREFIX}_series_latency_seconds",
            "Per series, from its last received instance to the last destination's acknowledgement (the quiet "
            "period, the queue, denoising and sending)",
            buckets=(5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200),
            registry=r,
        )
        self.model = Info(f"{PREFIX}_model", "The generator the node loaded", registry=r)
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, open fds, …
        r.register(_CatalogCollector(catalog, free_bytes))

    def set_model(self, name: str, version: str, device: str) -> None:
        self.model.info({"name": name, "version": version, "device": device})

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
