"""The agent's tools trust Cloudflare's interception CA where the container has it."""

from __future__ import annotations

from pathlib import Path

from kit.runtime.certs import BUNDLE_VARS, intercepted_tls_env

SYSTEM = b"-----BEGIN CERTIFICATE-----\nsystem\n-----END CERTIFICATE-----\n"
CLOUDFLARE = b"-----BEGIN CERTIFICATE-----\ncloudflare\n-----END CERTIFICATE-----\n"


def test_no_interception_ca_changes_nothing(tmp_path: Path) -> None:
    """Every target but Cloudflare: no variables, no file."""
    assert intercepted_tls_env(tmp_path, ca=tmp_path / "absent.crt") == {}
    assert list(tmp_path.iterdir()) == []


def test_the_tools_get_the_system_cas_and_cloudflares(tmp_path: Path) -> None:
    """OpenSSL, requests, curl and git read one bundle of both; Node adds the CA itself."""
    (tmp_path / "ca.crt").write_bytes(CLOUDFLARE)
    (tmp_path / "system.pem").write_bytes(SYSTEM)
    out = tmp_path / "tmp"
    out.mkdir()
    env = intercepted_tls_env(out, ca=tmp_path / "ca.crt", system=tmp_path / "system.pem")
    bundle = Path(env["SSL_CERT_FILE"])
    assert bundle.parent == out
    assert bundle.read_bytes() == SYSTEM + CLOUDFLARE
    assert {k: env[k] for k in BUNDLE_VARS} == dict.fromkeys(BUNDLE_VARS, str(bundle))
    assert env["NODE_EXTRA_CA_CERTS"] == str(tmp_path / "ca.crt")
    # A container without a system store still trusts the interception CA.
    (tmp_path / "system.pem").unlink()
    env = intercepted_tls_env(out, ca=tmp_path / "ca.crt", system=tmp_path / "system.pem")
    assert Path(env["SSL_CERT_FILE"]).read_bytes() == CLOUDFLARE
