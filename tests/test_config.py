"""Config file validation: one line naming every problem; secrets only from a private file or env."""

from __future__ import annotations

import os

import pytest

from hpc_bridge.config import config_from_dict, load_config
from hpc_bridge.errors import ConfigError

BASE = {"cluster": {"url": "https://cc.example.com", "name": "c1", "username": "svc"}}


def write(tmp_path, text: str):
    path = tmp_path / "config.toml"
    path.write_text(text)
    return str(path)


def test_minimal_config_has_defaults(tmp_path):
    cfg = load_config(write(tmp_path, '[cluster]\nurl = "https://cc.example.com/"\nname = "c1"\nusername = "svc"\n'))
    assert cfg.cluster.url == "https://cc.example.com" and cfg.cluster.verify_tls is True
    assert cfg.slurm.bin_dir == "/usr/bin" and cfg.slurm.conf_dir == "/etc/slurm"
    assert cfg.paths.state_dir == "/var/lib/hpc-bridge" and cfg.resume.capacity_cooloff == 600


@pytest.mark.parametrize(
    "change,expected",
    [
        ({"bogus": 1}, "unknown key bogus"),
        ({"cluster": {"url": "https://x", "name": "c"}}, "missing key cluster.username"),
        ({"cluster": {**BASE["cluster"], "timeout": "soon"}}, "cluster.timeout"),
        ({"cluster": {**BASE["cluster"], "verfy_tls": False}}, "unknown key cluster.verfy_tls"),
        ({"cluster": {**BASE["cluster"], "url": "ftp://x"}}, "must be an http(s) URL"),
        ({"cluster": {**BASE["cluster"], "url": "http://10.0.0.1"}}, "plain http"),
        ({"slurm": {"bin_dir": "usr/bin"}}, "slurm.bin_dir: must be an absolute path"),
        ({"slurm": {"address_mode": "magic"}}, "slurm.address_mode"),
        ({"partitions": {"nodearrays": {"hpc": {"suspend_policy": "explode"}}}}, "suspend_policy"),
        ({"state": {"keep_closed": 60}, "repair": {"grace": 300}},
         "state.keep_closed (60) must be at least repair.grace (300)"),
    ],
)
def test_invalid_configs_name_the_key(change, expected):
    with pytest.raises(ConfigError) as err:
        config_from_dict({**BASE, **change})
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_several_problems_reported_together():
    with pytest.raises(ConfigError) as err:
        config_from_dict({"cluster": {"url": "https://x"}, "extra": 1})
    text = str(err.value)
    assert "missing key cluster.name" in text and "missing key cluster.username" in text and "unknown key extra" in text


def test_broken_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[cluster\nurl="))
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "absent.toml"))


def test_config_path_from_environment(tmp_path, monkeypatch):
    path = write(tmp_path, '[cluster]\nurl = "https://a"\nname = "env"\nusername = "u"\n')
    monkeypatch.setenv("HPC_BRIDGE_CONFIG", path)
    assert load_config().cluster.name == "env"


def test_password_file_must_be_private(tmp_path, monkeypatch):
    monkeypatch.delenv("HPC_BRIDGE_PASSWORD", raising=False)
    secret = tmp_path / "pw"
    secret.write_text("hunter2-long\n")
    os.chmod(secret, 0o644)
    cfg = config_from_dict({"cluster": {**BASE["cluster"], "password_file": str(secret)}})
    with pytest.raises(ConfigError) as err:
        cfg.cluster.password()
    assert "readable by group or others" in str(err.value) and "chmod 600" in str(err.value)
    assert "hunter2" not in str(err.value)
    os.chmod(secret, 0o600)
    assert cfg.cluster.password() == "hunter2-long"


def test_password_from_environment_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("HPC_BRIDGE_PASSWORD", "from-env")
    cfg = config_from_dict(BASE)
    assert cfg.cluster.password() == "from-env"
    monkeypatch.delenv("HPC_BRIDGE_PASSWORD")
    with pytest.raises(ConfigError, match="no cluster password"):
        cfg.cluster.password()


@pytest.mark.parametrize("change,expected", [
    ({"paths": {"state_dir": "/var/lib/x\0y"}}, "paths.state_dir: must not contain a NUL character"),
    ({"cluster": {**BASE["cluster"], "password_file": "/etc/pw\0"}}, "cluster.password_file: must not contain a NUL"),
    ({"cluster": {**BASE["cluster"], "timeout": float("inf")}}, "cluster.timeout: Input should be a finite number"),
    ({"resume": {"resume_timeout": float("nan")}}, "resume.resume_timeout: Input should be a finite number"),
])
def test_paths_with_nul_and_numbers_that_are_not_finite_are_refused(change, expected):
    with pytest.raises(ConfigError) as err:
        config_from_dict({**BASE, **change})
    assert expected in str(err.value)


def test_config_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "config.toml"
    path.write_bytes(b'[cluster]\nurl = "https://x"\nname = "\xff\xfe"\n')
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        load_config(str(path))


@pytest.mark.parametrize("change,section,key,expected", [
    ({"cluster": {**BASE["cluster"], "timeout": "5"}}, "cluster", "timeout", 5.0),  # pydantic's lax conversion
    ({"cluster": {**BASE["cluster"], "retries": 3.0}}, "cluster", "retries", 3),
    ({"resume": {"follower": "false"}}, "resume", "follower", False),
    ({"partitions": {"nodearrays": {"hpc": {"max_nodes": "7"}}}}, "partitions", "nodearrays", None),
])
def test_values_pydantic_converts_are_kept_converted(change, section, key, expected):
    """A value the plain check does not take as it is, but pydantic converts, reads as pydantic
    converted it (as when pydantic checked every file)."""
    cfg = config_from_dict({**BASE, **change})
    value = getattr(getattr(cfg, section), key)
    if key == "nodearrays":
        assert value["hpc"].max_nodes == 7 and type(value["hpc"].max_nodes) is int
    else:
        assert value == expected and type(value) is type(expected)


def test_a_valid_config_is_read_without_pydantic():
    """The hooks read the config on every call: a valid one must not cost pydantic's imports."""
    import subprocess
    import sys

    code = ("import sys; from hpc_bridge.config import config_from_dict; "
            f"config_from_dict({BASE!r}); print('pydantic.main' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))})
    assert out.stdout.strip() == "False"


def test_a_section_made_in_code_with_a_bad_value_is_refused_in_one_line():
    from hpc_bridge.config import ClusterConfig

    with pytest.raises(ConfigError, match=r"^ClusterConfig: timeout: Input should be greater than 0$"):
        ClusterConfig(url="https://x.example", name="c", username="u", timeout=0)


@pytest.mark.parametrize("url, allow, refused", [
    ("http://10.0.0.1", False, True),
    ("HTTP://cc.example.com", False, True),
    ("http://127.0.0.1:8080", False, False),
    ("http://[::1]:8080", False, False),
    ("http://localhost", False, False),
    ("http://10.0.0.1", True, False),
    ("https://10.0.0.1", False, False),
])
def test_plain_http_is_refused_alike_by_the_config_and_the_client(url, allow, refused):
    from hpc_bridge.api.client import ClusterClient

    cluster = {**BASE["cluster"], "url": url, "allow_plain_http": allow}
    outcomes = []
    for make in (lambda: config_from_dict({"cluster": cluster}),
                 lambda: ClusterClient(url, "c1", "svc", "pw", allow_plain_http=allow).close()):
        try:
            make()
            outcomes.append(None)
        except ConfigError as err:
            outcomes.append(str(err).split("url: ", 1)[1])
    want = "plain http to a host that is not this machine sends the password in clear; use https, or set " \
           "[cluster] allow_plain_http = true"
    assert outcomes == ([want, want] if refused else [None, None])
