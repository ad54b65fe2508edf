"""DICOM TLS to a destination ([destinations.tls]) against dcmtk storescp with +tls (client certificates required):
sent when the peer's CA is trusted and its certificate names the host; refused with the reason otherwise, and a
node then counts attempts and ends FAILED by the normal send rules, the derived series kept."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread

from denoise_harness.node import NodeProcess
from dicom_denoise_node.config import ConfigError, Destination, load_settings
from dicom_denoise_node.send.scu import SendError, echo, send_files
from dicom_denoise_node.store.catalog import SeriesState
from tests.peers import LOOPBACK, StoreSCP, make_pki, storescu, write_ct_series

pytestmark = pytest.mark.e2e


def tls_peer(storescp_factory, pki: Path, ae_title: str = "PACS") -> StoreSCP:
    """storescp over TLS with ``pki``'s server certificate, requiring a client certificate that pki's CA signed."""
    args = ["+tls", str(pki / "server.key"), str(pki / "server.pem"), "+cf", str(pki / "ca.pem")]
    return storescp_factory(ae_title, extra_args=args)


def tls_keys(ca: Path, client: Path, verify_hostname: bool = True) -> dict[str, object]:
    return {"enabled": True, "ca_file": str(ca / "ca.pem"), "cert_file": str(client / "client.pem"),
            "key_file": str(client / "client.key"), "verify_hostname": verify_hostname}  # fmt: skip


def _dest(peer: StoreSCP, **tls: object) -> Destination:
    return Destination(ae_title=peer.ae_title, host=LOOPBACK, port=peer.port, tls=tls)


def test_sent_over_tls_when_the_peer_is_trusted_refused_with_the_reason_when_not(tmp_path, pki, storescp_factory):
    files = write_ct_series(tmp_path / "in", 2)
    peer = tls_peer(storescp_factory, pki)
    assert echo(_dest(peer, **tls_keys(pki, pki)), "DENOISE") == 0
    assert send_files(files, _dest(peer, **tls_keys(pki, pki)), "DENOISE") == 2
    assert len(peer.wait_for_files(2)) == 2
    other = make_pki(tmp_path / "other-ca")  # a CA that did not sign the peer's certificate
    with pytest.raises(SendError, match="TLS: the peer's certificate was refused: .*(unable to get|self.signed)"):
        send_files(files, _dest(peer, **tls_keys(other, pki)), "DENOISE")
    with pytest.raises(SendError, match="association with .* failed"):  # the peer needs TLS: plain DICOM fails
        send_files(files, Destination(ae_title="PACS", host=LOOPBACK, port=peer.port), "DENOISE")
    assert len(peer.files()) == 2


def test_the_peer_certificate_must_name_the_host_unless_verify_hostname_is_off(tmp_path, storescp_factory):
    elsewhere = make_pki(tmp_path / "elsewhere", server_ip="127.0.0.2")  # trusted, but not issued for 127.0.0.1
    peer = tls_peer(storescp_factory, elsewhere)
    files = write_ct_series(tmp_path / "in", 1)
    with pytest.raises(SendError, match="TLS: the peer's certificate was refused: IP address mismatch"):
        send_files(files, _dest(peer, **tls_keys(elsewhere, elsewhere)), "DENOISE")
    assert send_files(files, _dest(peer, **tls_keys(elsewhere, elsewhere, verify_hostname=False)), "DENOISE") == 1


def test_tls_keys_are_checked_at_start_naming_the_key_and_the_file(tmp_path, pki):
    def load(tls: str, kind: str = 'ae_title = "PACS"\nhost = "127.0.0.1"\nport = 104') -> None:
        path = tmp_path / "node.toml"
        path.write_text(f"[[destinations]]\n{kind}\n[destinations.tls]\n{tls}\n")
        load_settings(path)

    load(f'enabled = true\nca_file = "{pki / "ca.pem"}"')
    with pytest.raises(ConfigError, match=r"'destinations\[0\]\.tls' in .*node.toml: .*cannot load .*nope.pem"):
        load(f'enabled = true\nca_file = "{tmp_path / "nope.pem"}"')
    with pytest.raises(ConfigError, match=r"destinations\[0\]\.tls.*cannot load .*ca.key"):  # not a certificate
        load(f'enabled = true\nca_file = "{pki / "ca.key"}"')
    with pytest.raises(ConfigError, match="cert_file and key_file go together"):
        load(f'enabled = true\ncert_file = "{pki / "client.pem"}"')
    with pytest.raises(ConfigError, match="an https:// url"):
        load("enabled = true", 'kind = "stow-rs"\nurl = "http://127.0.0.1:8042/dicom-web"')


def test_a_node_sends_over_tls_and_an_untrusted_peer_fails_the_series_by_the_send_rules(
    tmp_path, tiny_model, pki, storescp_factory
):
    good, bad = tls_peer(storescp_factory, pki, "GOOD"), tls_peer(storescp_factory, pki, "BADCA")
    other = make_pki(tmp_path / "other-ca")

    def extra(ca: Path) -> str:
        return (f'[destinations.tls]\nenabled = true\nca_file = "{ca / "ca.pem"}"\n'
                f'cert_file = "{pki / "client.pem"}"\nkey_file = "{pki / "client.key"}"\n')  # fmt: skip

    destinations = [
        {"ae_title": "GOOD", "port": good.port, "name": "GOOD", "extra": extra(pki)},
        {"ae_title": "BADCA", "port": bad.port, "name": "BADCA", "extra": extra(other)},
    ]
    files = write_ct_series(tmp_path / "in", 2, rows=32, columns=32)
    series_uid = str(dcmread(files[0]).SeriesInstanceUID)
    node = NodeProcess(tmp_path, tiny_model, destinations, max_attempts=2).start()
    try:
        assert storescu(files, node.port, "DENOISE").returncode == 0
        assert node.wait_state(series_uid, SeriesState.FAILED, timeout=120), node.log()[-3000:]
        assert len(good.wait_for_files(2)) == 2 and bad.files() == []
        cat = node.catalog()
        try:
            (row,) = [r for r in cat.views.series_overview() if r["series_uid"] == series_uid]
            derived = cat.deliveries.derived_instances(cat.housekeeping.series_id(series_uid) or 0)
        finally:
            cat.close()
        assert node.alive()
    finally:
        node.stop()
    error = str(row["last_error"])
    assert "BADCA" in error and "TLS: the peer's certificate was refused" in error and "GOOD" not in error, error
    assert len(derived) == 2 and all(Path(d.path).is_file() for d in derived)  # kept for `retry`
    log = node.log()
    assert "send attempt 2/2 failed" in log and "certificate was refused" in log
