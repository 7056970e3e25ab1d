"""Running certbot: the argument list, failures and their messages, the timeout."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from services.certd.certbot import Certbot, CertbotError, explain, reason
from tests.conftest import make_settings

pytestmark = pytest.mark.slow  # pebble and certbot


def test_argv_is_explicit_and_cannot_be_injected(tmp_path):
    settings = make_settings(tmp_path, acme_email="ops@example.com", dns_propagation_seconds=30)
    argv = Certbot(settings).certonly_argv(
        "a.example", ["a.example", "*.a.example"], "ops@example.com"
    )
    assert argv[0] == str(Path(sys.executable).parent / "certbot")
    assert argv[1] == "certonly"
    for flag in (
        "--non-interactive",
        "--agree-tos",
        "--email=ops@example.com",
        "--server=https://acme-v02.api.letsencrypt.org/directory",
        "--authenticator=dns-cloudflare",
        f"--dns-cloudflare-credentials={settings.cloudflare_credentials.absolute()}",
        "--dns-cloudflare-propagation-seconds=30",
        "--cert-name=a.example",
        "--domain=a.example",
        "--domain=*.a.example",
        f"--config-dir={(tmp_path / 'certs').absolute()}",
        f"--work-dir={(tmp_path / 'certs' / 'work').absolute()}",
    ):
        assert flag in argv
    # Every value is glued to its flag: nothing can become an option of its own.
    assert all(a.startswith("--") for a in argv[2:])
    anonymous = Certbot(settings).certonly_argv("a.example", ["a.example"], "")
    assert "--register-unsafely-without-email" in anonymous
    renew = Certbot(settings).renew_argv()
    assert renew[1] == "renew" and "--no-random-sleep-on-renew" in renew


def test_missing_credentials_say_what_to_do(tmp_path):
    with pytest.raises(CertbotError, match="dns_cloudflare_api_token = <token>"):
        Certbot(make_settings(tmp_path)).obtain("a.example", ["a.example"], "")


def test_refused_token_gives_certbots_explanation(tmp_path, acme):
    credentials = tmp_path / "wrong-token"
    credentials.write_text("dns_cloudflare_api_token = wrong\n")
    credentials.chmod(0o600)
    settings = make_settings(tmp_path, **{**acme.settings(), "cloudflare_credentials": credentials})
    with pytest.raises(CertbotError) as failure:
        Certbot(settings).obtain("token.example.test", ["token.example.test"], "")
    message = str(failure.value)
    assert message.startswith("Command failed: ")
    assert "Invalid access token" in message and "Cloudflare" in message
    assert "Saving debug log" not in message
    # For the admin: certbot's explanation alone, without the command line.
    assert "Invalid access token" in failure.value.reason
    assert "certonly" not in failure.value.reason and "--" not in failure.value.reason


def test_an_unreachable_ca_is_said_in_words(tmp_path, acme):
    settings = make_settings(
        tmp_path, **{**acme.settings(), "acme_server": "https://127.0.0.1:1/dir"}
    )
    with pytest.raises(CertbotError) as failure:
        Certbot(settings).obtain("a.example.test", ["a.example.test"], "")
    assert "requests.exceptions" in str(failure.value)  # the log has it all
    assert failure.value.reason == (
        "Cannot reach the certificate authority at https://127.0.0.1:1/dir: Connection refused"
    )


def test_timeout_stops_certbot(tmp_path, acme):
    settings = make_settings(tmp_path, **{**acme.settings(), "certbot_timeout": 0.05})
    with pytest.raises(CertbotError, match=r"did not finish within 0\.05s"):
        Certbot(settings).renew()


def test_explain_keeps_what_matters():
    output = "Saving debug log to /x\nRequesting a certificate for a.example\nBoom\n\nAsk for help"
    assert explain(output) == "Requesting a certificate for a.example\nBoom"


def test_reason_drops_the_command_what_certbot_was_doing_and_tracebacks():
    zone = "Unable to determine zone_id for x.test using zone names: ['x.test', 'test']."
    assert (
        reason(f"Saving debug log to /x\nRequesting a certificate for x.test\n{zone}\n", "S")
        == zone
    )
    crash = (
        "An unexpected error occurred:\n"
        "Traceback (most recent call last):\n"
        '  File "/usr/lib/python3/dist-packages/certbot/main.py", line 1, in main\n'
        "    raise errors.PluginError('boom')\n"
        "certbot.errors.PluginError: The Cloudflare API said no\n"
    )
    assert reason(crash, "S") == "The Cloudflare API said no"
    timeout = "An unexpected error occurred:\nrequests.exceptions.ReadTimeout: read timed out\n"
    assert reason(timeout, "https://ca.test/dir") == (
        "Cannot reach the certificate authority at https://ca.test/dir"
    )
    assert reason("", "S") == "certbot failed without saying why"
    assert len(reason("x" * 5000, "S")) == 400
