from pathlib import Path

import pytest
from pydantic import BaseModel

from dicom_denoise_node.config import ConfigError, load_settings

EXAMPLE = Path(__file__).parents[2] / "etc" / "denoise-node.toml"


def test_example_config_is_valid_and_documents_every_key():
    settings = load_settings(EXAMPLE)
    text = EXAMPLE.read_text()
    for section, model in settings:
        if section == "rules":
            for key in type(model[0]).model_fields:
                assert f"\n{key} =" in text or f"\n# {key} =" in text, f"[[rules]] {key} is not in the example"
            continue
        if section == "destinations":  # both kinds: the DIMSE block and the commented STOW-RS one
            for key in type(model[0]).model_fields:
                value = getattr(model[0], key)
                if isinstance(value, BaseModel):  # a sub-table such as [destinations.tls]
                    assert f"\n[destinations.{key}]\n" in text, f"[destinations.{key}] is not in the example"
                    block = text.split(f"\n[destinations.{key}]\n", 1)[1].split("\n[", 1)[0]
                    for sub in type(value).model_fields:
                        assert f"\n{sub} =" in "\n" + block, f"[destinations.{key}] {sub} is not in the example"
                    continue
                assert f"\n{key} =" in text or f"\n# {key} =" in text, f"[[destinations]] {key} is not in the example"
            continue
        for key in type(model).model_fields:
            value = getattr(model, key)
            if isinstance(value, BaseModel):  # a sub-table such as [node.tls]
                assert f"\n[{section}.{key}]\n" in text, f"[{section}.{key}] is not in the example config"
                for sub in type(value).model_fields:
                    assert f"\n{sub} =" in text, f"[{section}.{key}] {sub} is not in the example config"
                continue
            # A key unset in the example (TOML has no null) may be documented as a commented-out example.
            unset_ok = value is None and f"\n# {key} =" in text
            assert f"\n{key} =" in text or unset_ok, f"[{section}] {key} is not in the example config"
    assert settings.destinations[0].ae_title == "PACS"
    assert settings.rules[0].model_dump(exclude={"name"}) == settings.active_rules[0].model_dump(exclude={"name"})
    assert load_settings(None).active_rules[0].model_dump(exclude={"name"}) == settings.rules[0].model_dump(
        exclude={"name"}
    ), "the example rule is the implicit default"


def test_defaults_without_file():
    settings = load_settings(None)
    assert settings.node.port == 11112
    assert settings.catalog_url.endswith("catalog.sqlite")


def test_unknown_key_names_key_and_file(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[node]\nprot = 104\n")
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert "node.prot" in str(err.value) and str(cfg) in str(err.value)


def test_invalid_value_names_key_and_file(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[model]\ntile_size = 250\n[[destinations]]\nae_title = "P"\nhost = "h"\nport = 0\n')
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    msg = str(err.value)
    assert "model" in msg and "multiple of 4" in msg
    assert "destinations[0].port" in msg and str(cfg) in msg


def test_unknown_section(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[nodes]\nport = 1\n")
    with pytest.raises(ConfigError, match="nodes"):
        load_settings(cfg)


def test_env_overrides_file(tmp_path, monkeypatch):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[node]\nport = 2000\nae_title = 'FROMFILE'\n")
    monkeypatch.setenv("DENOISE_NODE_NODE__PORT", "3000")
    monkeypatch.setenv("DENOISE_NODE_SERIES__QUIET_PERIOD_S", "2.5")
    settings = load_settings(cfg)
    assert settings.node.port == 3000
    assert settings.node.ae_title == "FROMFILE"
    assert settings.series.quiet_period_s == 2.5


def test_bad_env_value_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("DENOISE_NODE_SEND__MAX_ATTEMPTS", "zero")
    with pytest.raises(ConfigError, match="DENOISE_NODE_SEND__MAX_ATTEMPTS"):
        load_settings(None)


def test_unknown_env_variable_is_an_error(monkeypatch):
    monkeypatch.setenv("DENOISE_NODE_PORT", "104")
    with pytest.raises(ConfigError, match="DENOISE_NODE_PORT"):
        load_settings(None)


def test_invalid_ae_title(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[node]\nae_title = 'A\\\\B'\n")
    with pytest.raises(ConfigError, match="ae_title"):
        load_settings(cfg)


def test_not_toml(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[node\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(cfg)


def test_rule_with_unknown_destination_names_key_and_file(tmp_path):
    cfg = tmp_path / "rules.toml"
    cfg.write_text(
        '[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "127.0.0.1"\nport = 4242\n'
        '[[rules]]\nname = "ld"\ndestinations = ["archive"]\n'
    )
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert "rules[0].destinations" in str(err.value) and "archive" in str(err.value) and str(cfg) in str(err.value)


def test_rule_with_bad_regex_names_key(tmp_path):
    cfg = tmp_path / "rules.toml"
    cfg.write_text('[[rules]]\nname = "ld"\nseries_description = "low(dose"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert "rules[0].series_description" in str(err.value) and str(cfg) in str(err.value)


def test_a_stow_rs_destination_without_url_or_a_dimse_one_without_host_names_the_key_and_file(tmp_path):
    cfg = tmp_path / "dest.toml"
    cfg.write_text(
        '[[destinations]]\nkind = "stow-rs"\nname = "web"\n[[destinations]]\nae_title = "PACS"\nport = 104\n'
    )
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    msg = str(err.value)
    assert "'destinations[0].url'" in msg and "needs url" in msg and str(cfg) in msg
    assert "'destinations[1].host'" in msg and "needs host" in msg
    cfg.write_text('[[destinations]]\nkind = "stow-rs"\nurl = "http://127.0.0.1:8042/dicom-web"\nport = 104\n')
    with pytest.raises(ConfigError, match=r"'destinations\[0\].port' .*not a key of kind = \"stow-rs\""):
        load_settings(cfg)


def test_stow_rs_auth_is_basic_or_bearer_and_never_printed(tmp_path):
    from dicom_denoise_node.config import describe

    cfg = tmp_path / "dest.toml"
    web = '[[destinations]]\nkind = "stow-rs"\nurl = "http://127.0.0.1:8042/dicom-web/"\n'
    cfg.write_text(web + 'username = "node"\npassword = "pw-one"\n')
    settings = load_settings(cfg)
    dest = settings.destinations[0]
    assert "pw-one" not in repr(settings) + describe(settings) + str(dest.model_dump())
    assert dest.key == "http://127.0.0.1:8042/dicom-web" and dest.password.get_secret_value() == "pw-one"
    cfg.write_text(web + 'username = "node"\n')
    with pytest.raises(ConfigError, match=r"'destinations\[0\].password' .*both username and password"):
        load_settings(cfg)
    cfg.write_text(web + 'username = "node"\npassword = "pw-two"\ntoken = "tk-two"\n')
    with pytest.raises(ConfigError, match=r"'destinations\[0\].token' .*choose one") as err:
        load_settings(cfg)
    assert "pw-two" not in str(err.value) and "tk-two" not in str(err.value)
    cfg.write_text('[[destinations]]\nkind = "stow-rs"\nurl = "http://node:pw-three@127.0.0.1/dicom-web"\n')
    with pytest.raises(ConfigError, match=r"'destinations\[0\].url' .*credentials do not belong in url") as err:
        load_settings(cfg)
    assert "pw-three" not in str(err.value)


def test_roles_shared_spool_and_gpu_index(tmp_path):
    """Several nodes on one catalog: a role, a shared spool (empty = data_dir), a stable node id and cuda:N."""
    cfg = tmp_path / "n.toml"
    cfg.write_text(
        '[node]\ndata_dir = "/d"\nrole = "worker"\nspool_dir = "/shared"\n[model]\ndevice = "cuda:1"\n'
        "[series]\nclaim_lease_s = 30\n"
    )
    settings = load_settings(cfg)
    assert settings.node.role == "worker" and settings.spool_dir == Path("/shared")
    assert settings.model.device == "cuda:1" and settings.series.claim_lease_s == 30
    assert settings.node_id.endswith(":/d") and settings.node_id == load_settings(cfg).node_id  # stable
    cfg.write_text('[node]\ndata_dir = "/d"\nspool_dir = ""\n')
    assert load_settings(cfg).spool_dir == Path("/d")
    for bad in ('[node]\nrole = "both"\n', '[model]\ndevice = "gpu1"\n'):
        cfg.write_text(bad)
        with pytest.raises(ConfigError) as err:
            load_settings(cfg)
        assert str(cfg) in str(err.value) and ("role" in str(err.value) or "device" in str(err.value))


def test_a_missing_gpu_is_a_config_error_naming_the_device():
    import torch

    from dicom_denoise_node.denoise.inference import select_device

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ConfigError, match=rf"cuda:{count}"):
        select_device(f"cuda:{count}")


def test_a_catalog_password_is_never_shown(tmp_path):
    """The PostgreSQL URL carries a password: the start-up line, `status` and exported training metadata hide it."""
    from denoise_trainer.train.checkpoint import checkpoint_header
    from denoise_trainer.train.recipe import build_config
    from dicom_denoise_node.config import describe, redact_url

    url = "postgresql+psycopg://denoise:s3cret-pw@db.example/denoise"
    cfg = tmp_path / "n.toml"
    cfg.write_text(f'[catalog]\nurl = "{url}"\n')
    settings = load_settings(cfg)
    assert settings.catalog_url == url  # the node still connects with it
    for shown in (describe(settings), settings.catalog_url_shown, redact_url(url)):
        assert "s3cret-pw" not in shown and "denoise:***@db.example/denoise" in shown
    header = checkpoint_header(build_config("tiny", overrides={"catalog_url": url}), {}, {}, 0, 0, 0, 1)
    assert "s3cret-pw" not in str(header) and header["config"]["catalog_url"].endswith("***@db.example/denoise")
    assert redact_url("") == "" and redact_url("sqlite:////var/lib/x.sqlite") == "sqlite:////var/lib/x.sqlite"


def test_the_send_lease_is_a_setting_and_a_bad_one_is_refused_naming_the_key(tmp_path):
    """`[send] lease_s`: how long a send attempt holds its series against other workers (was a constant)."""
    cfg = tmp_path / "s.toml"
    cfg.write_text("[send]\nlease_s = 900\n")
    assert load_settings(cfg).send.lease_s == 900 and load_settings(None).send.lease_s == 600
    cfg.write_text("[send]\nlease_s = 0\n")
    with pytest.raises(ConfigError, match=r"send\.lease_s") as err:
        load_settings(cfg)
    assert str(cfg) in str(err.value)


def test_the_gpu_path_is_fp32_by_default():
    """Issue 28: CUDA inference and training run fp32 (TF32 matrix units) unless a site or recipe asks for half
    precision; the example config says so too (a bf16 training run collapsed, docs/model-card.md)."""
    import tomllib

    from denoise_trainer.train.recipe import PRESETS, build_config
    from dicom_denoise_node.config import ModelSettings

    assert ModelSettings().half_precision is False
    example = tomllib.loads((Path(__file__).parents[2] / "etc" / "denoise-node.toml").read_text())
    assert example["model"]["half_precision"] is False
    assert all(build_config(name).amp is False for name in PRESETS)
