"""The admin's own nginx server configuration (`POST /nginx/config/update`): what it may hold.

The text becomes nginx's `server.conf`, included in the `http` block of a main configuration
llmp owns. It is checked against an allowlist, by the api before it is saved and by certd
before it is tested and applied (a configuration saved by an older llmp is checked too):

- it is read by crossplane, the nginx parser, after refusing the few spellings whose reading
  crossplane and nginx could disagree on (`${`, control and non-ASCII white-space characters),
  so the statements checked are the statements nginx will run;
- at its top level only `upstream` and `server` blocks, rate-limit zones and the settings
  below; inside `upstream` only servers and balancing; inside `server`, `location`, `if` and
  `limit_except` only the directives of `ROUTING`, `SETTINGS`, `TLS` and `ADDRESSES`;
- every argument that names a file, a socket or an address is checked on its own:
  certificates and keys are absolute paths inside LETSENCRYPT_DIR (so no `engine:` or `data:`
  forms), `proxy_pass` is an `http(s)://host[:port][/path]` URL, `listen`, `server` and
  `allow`/`deny` take network addresses: never a unix socket, never a variable;
- nothing reads or writes another file: no `include`, `root`, `alias`, `try_files`, logs to
  files, temp or cache paths, stores, file tests in `if`, `ssl_conf_command` or modules, and
  no variable that tells a path on the server (`$request_body_file`, `$document_root`...).
  (Static files, if a location serves any, come from the empty folder that llmp's main
  configuration sets as the `root`.)
Whether the statements make a valid nginx configuration is then nginx's to say (`nginx -t`).
"""

from __future__ import annotations

import ipaddress
import os
import posixpath
import re
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import crossplane  # type: ignore[import-untyped]  # no type information shipped

from shared.site import SiteError

MAX_LENGTH = 256 * 1024

# Directives whose arguments name nothing on the machine: text, times, sizes, header names and
# values, URIs, regular expressions, flags, status codes. Variables are fine in them.
ROUTING = frozenset(
    {
        "return",
        "rewrite",
        "set",
        "break",
        "error_page",
        "recursive_error_pages",
        "internal",
        "add_header",
        "add_trailer",
        "expires",
        "default_type",
        "charset",
        "etag",
        "if_modified_since",
        "max_ranges",
        "auth_request",
        "auth_request_set",
        "satisfy",
        "absolute_redirect",
        "port_in_redirect",
        "server_name_in_redirect",
        "server_tokens",
        "real_ip_header",
        "real_ip_recursive",
        "log_not_found",
        # Proxying (proxy_pass itself is checked below).
        "proxy_set_header",
        "proxy_hide_header",
        "proxy_pass_header",
        "proxy_ignore_headers",
        "proxy_redirect",
        "proxy_http_version",
        "proxy_buffering",
        "proxy_request_buffering",
        "proxy_buffer_size",
        "proxy_buffers",
        "proxy_busy_buffers_size",
        "proxy_max_temp_file_size",
        "proxy_read_timeout",
        "proxy_send_timeout",
        "proxy_connect_timeout",
        "proxy_next_upstream",
        "proxy_next_upstream_tries",
        "proxy_next_upstream_timeout",
        "proxy_intercept_errors",
        "proxy_ignore_client_abort",
        "proxy_socket_keepalive",
        "proxy_cookie_domain",
        "proxy_cookie_path",
        "proxy_cookie_flags",
        "proxy_pass_request_body",
        "proxy_pass_request_headers",
        "proxy_set_body",
        "proxy_method",
        "proxy_cache_bypass",
        "proxy_no_cache",
        "proxy_limit_rate",
        "proxy_headers_hash_max_size",
        "proxy_headers_hash_bucket_size",
        "proxy_ssl_server_name",
        "proxy_ssl_name",
        "proxy_ssl_verify",
        "proxy_ssl_verify_depth",
        "proxy_ssl_protocols",
        "proxy_ssl_ciphers",
        "proxy_ssl_session_reuse",
        # Rate and connection limits (zones live in shared memory).
        "limit_req",
        "limit_req_status",
        "limit_req_log_level",
        "limit_conn",
        "limit_conn_status",
        "limit_conn_log_level",
        "limit_rate",
        "limit_rate_after",
        # Compression of answers.
        "gzip",
        "gzip_types",
        "gzip_min_length",
        "gzip_comp_level",
        "gzip_vary",
        "gzip_proxied",
        "gzip_http_version",
        "gzip_disable",
        "gzip_buffers",
    }
)
# Timeouts and sizes of client connections.
SETTINGS = frozenset(
    {
        "client_max_body_size",
        "client_body_buffer_size",
        "client_body_timeout",
        "client_header_timeout",
        "client_header_buffer_size",
        "large_client_header_buffers",
        "keepalive_timeout",
        "keepalive_requests",
        "keepalive_time",
        "send_timeout",
        "lingering_close",
        "lingering_time",
        "lingering_timeout",
        "reset_timedout_connection",
        "chunked_transfer_encoding",
        "tcp_nodelay",
        "tcp_nopush",
        "sendfile",
        "merge_slashes",
        "underscores_in_headers",
        "ignore_invalid_headers",
        "http2_max_concurrent_streams",
        "http2_chunk_size",
        "http2_body_preread_size",
        "resolver",
        "resolver_timeout",
        "server_name",
    }
)
TLS = frozenset(
    {
        "ssl",
        "ssl_protocols",
        "ssl_ciphers",
        "ssl_prefer_server_ciphers",
        "ssl_session_cache",
        "ssl_session_timeout",
        "ssl_session_tickets",
        "ssl_ecdh_curve",
        "ssl_buffer_size",
        "ssl_early_data",
        "ssl_stapling",
        "ssl_stapling_verify",
        "ssl_verify_client",
        "ssl_verify_depth",
        "ssl_reject_handshake",
    }
)
# Files nginx reads while it tests and loads the configuration (OpenSSL reads them; a
# `engine:<library>:<key>` form would load a shared library): one absolute path inside
# LETSENCRYPT_DIR each (trusted CA bundles may also be the system's).
CERTIFICATE_FILES = frozenset(
    {
        "ssl_certificate",
        "ssl_certificate_key",
        "ssl_client_certificate",
        "ssl_trusted_certificate",
        "ssl_dhparam",
        "ssl_crl",
        "proxy_ssl_certificate",
        "proxy_ssl_certificate_key",
        "proxy_ssl_trusted_certificate",
        "proxy_ssl_crl",
    }
)
SYSTEM_CA_DIR = "/etc/ssl/certs"
TRUSTED_CA_FILES = frozenset({"ssl_trusted_certificate", "proxy_ssl_trusted_certificate"})
ADDRESSES = frozenset({"listen", "proxy_pass", "allow", "deny", "set_real_ip_from"})
# Logs go to nginx's stderr (llmp's log) or nowhere, never to a file.
LOGS = frozenset({"error_log", "access_log"})
_LOG_LEVELS = frozenset({"debug", "info", "notice", "warn", "error", "crit", "alert", "emerg"})
TOP_LEVEL = frozenset({"upstream", "server", "limit_req_zone", "limit_conn_zone"})
UPSTREAM = frozenset(
    {
        "server",
        "keepalive",
        "keepalive_timeout",
        "keepalive_requests",
        "keepalive_time",
        "least_conn",
        "ip_hash",
        "hash",
        "random",
        "zone",
    }
)
BLOCKS = {
    # block -> the blocks it may hold
    "http": frozenset({"upstream", "server"}),
    "server": frozenset({"location", "if"}),
    "location": frozenset({"location", "if", "limit_except"}),
    "if": frozenset(),
    "limit_except": frozenset(),
    "upstream": frozenset(),
}
INSIDE = ROUTING | SETTINGS | TLS | CERTIFICATE_FILES | ADDRESSES | LOGS
# `if` conditions may compare variables, never test files (an oracle on the server's files).
_FILE_TESTS = frozenset({"-f", "!-f", "-d", "!-d", "-e", "!-e", "-x", "!-x"})
_LISTEN_FLAGS = frozenset(
    {"default_server", "default", "ssl", "http2", "proxy_protocol", "reuseport", "deferred"}
)
_LISTEN_OPTIONS = ("backlog=", "ipv6only=", "so_keepalive=", "rcvbuf=", "sndbuf=", "fastopen=")
_UPSTREAM_SERVER_OPTIONS = ("weight=", "max_fails=", "fail_timeout=", "max_conns=", "slow_start=")
_HOST = r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9_.-]*[A-Za-z0-9])?)"
_HOST_PORT = re.compile(rf"{_HOST}(?::[0-9]{{1,5}})?")
_PORT = re.compile(r"[0-9]{1,5}")
_URL = re.compile(rf"https?://{_HOST}(?::[0-9]{{1,5}})?(?:/[!-~]*)?")
# Variables that tell where files are on the server (an upload kept on disk, the root).
_FILE_VARIABLES = re.compile(
    r"\$\{?(request_body_file|document_root|realpath_root|request_filename)"
)
# Spellings crossplane and nginx may read differently: `${` (crossplane reads on to the next
# `}`, nginx ends the word at `;`), white space nginx does not know as such, control characters.
_AMBIGUOUS = re.compile(r"\$\{|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|[^\S \t\r\n]")


class CustomConfigError(SiteError):
    """The configuration holds something the allowlist does not; the message says what."""


def check_custom_config(text: object, letsencrypt_dir: Path) -> str:
    """`text` if every statement in it is allowed; CustomConfigError saying why not otherwise."""
    if not isinstance(text, str):
        raise CustomConfigError("Invalid request body")
    if len(text) > MAX_LENGTH:
        raise CustomConfigError(f"Custom config: longer than {MAX_LENGTH} characters")
    ambiguous = _AMBIGUOUS.search(text)
    if ambiguous:
        line = text.count("\n", 0, ambiguous.start()) + 1
        raise CustomConfigError(
            f"Custom config, line {line}: {ambiguous[0]!r} is not allowed "
            "(write variables as $name, and use only spaces, tabs and new lines between words)"
        )
    _Checker(letsencrypt_dir.absolute()).block("http", _parse(text))
    return text


def certificate_files(text: str) -> list[str]:
    """The files the certificate directives of `text` name (an allowed text, or llmp's own)."""
    found: list[str] = []
    pending = list(_parse(text))
    while pending:
        statement = pending.pop()
        pending.extend(statement.get("block", ()))
        if statement["directive"] in CERTIFICATE_FILES and statement["args"]:
            found.append(statement["args"][0])
    return found


def _parse(text: str) -> list[dict[str, Any]]:
    """crossplane's statements of `text` (argument counts checked; where each directive may go
    is nginx's to check, since the text sits inside `http`, a context crossplane cannot start
    in). crossplane reads files only: the text goes through a private temporary one."""
    with tempfile.NamedTemporaryFile("w", suffix=".conf", encoding="utf-8") as file:
        file.write(text)
        file.flush()
        payload = crossplane.parse(
            file.name, single=True, catch_errors=False, check_ctx=False, comments=False
        )
    if payload["errors"]:  # syntax errors are reported here, whatever catch_errors says
        error = payload["errors"][0]
        message = str(error["error"]).split(" in /")[0]  # without the temporary file's name
        raise CustomConfigError(f"Custom config, line {error['line']}: {message}")
    parsed: list[dict[str, Any]] = payload["config"][0]["parsed"]
    return parsed


class _Checker:
    def __init__(self, letsencrypt_dir: Path) -> None:
        self.letsencrypt_dir = letsencrypt_dir

    def block(self, context: str, statements: Iterable[dict[str, Any]]) -> None:
        for statement in statements:
            name: str = statement["directive"]
            args: list[str] = statement["args"]
            where = f"Custom config, line {statement['line']}"
            if "block" in statement:
                if name not in BLOCKS[context]:
                    raise CustomConfigError(f'{where}: a "{name}" block is not allowed here')
                self.block_arguments(where, name, args)
                self.block(name, statement["block"])
                continue
            allowed = UPSTREAM if context == "upstream" else INSIDE
            if context == "http":
                allowed = (INSIDE - ADDRESSES - CERTIFICATE_FILES - TLS) | TOP_LEVEL
            if name not in allowed:
                raise CustomConfigError(
                    f'{where}: "{name}" is not allowed here (allowed: the directives of a site '
                    "that read no file and reach no local socket; see SECURITY.md)"
                )
            self.arguments(where, context, name, args)

    def block_arguments(self, where: str, name: str, args: Sequence[str]) -> None:
        _no_file_variables(where, args)
        if name == "if" and _FILE_TESTS.intersection(args):
            raise CustomConfigError(f'{where}: file tests in "if" are not allowed')
        if name == "upstream" and (len(args) != 1 or "$" in args[0]):
            raise CustomConfigError(f'{where}: "upstream" takes one name')

    def arguments(self, where: str, context: str, name: str, args: Sequence[str]) -> None:
        _no_file_variables(where, args)
        if name in CERTIFICATE_FILES:
            self.certificate_file(where, name, args)
        elif name == "proxy_pass":
            if len(args) != 1 or not _URL.fullmatch(args[0]) or "$" in args[0]:
                raise CustomConfigError(
                    f'{where}: "proxy_pass" takes one http:// or https:// URL to a host or an '
                    "upstream block, without variables"
                )
        elif name == "listen":
            _listen(where, args)
        elif name == "server" and context == "upstream":
            _upstream_server(where, args)
        elif name in ("allow", "deny", "set_real_ip_from") and args != ["all"]:
            _network(where, name, args)
        elif name == "error_log" and not (
            args[:1] == ["stderr"] and len(args) <= 2 and _LOG_LEVELS.issuperset(args[1:])
        ):
            raise CustomConfigError(f'{where}: "error_log" may only be "stderr [level]"')
        elif name == "access_log" and args != ["off"]:
            raise CustomConfigError(f'{where}: "access_log" may only be "off"')

    def certificate_file(self, where: str, name: str, args: Sequence[str]) -> None:
        roots = [str(self.letsencrypt_dir)]
        if name in TRUSTED_CA_FILES:
            roots.append(SYSTEM_CA_DIR)
        path = args[0] if len(args) == 1 else ""
        normal = posixpath.normpath(path) if path.startswith("/") else ""
        real = os.path.realpath(normal) if normal else ""
        inside = [
            root
            for root in roots
            if _within(normal, root) and _within(real, os.path.realpath(root))
        ]
        if "$" in path or normal != path or not inside:
            raise CustomConfigError(
                f'{where}: "{name}" takes the absolute path of a file inside '
                f"{' or '.join(roots)}, without variables"
            )


def _no_file_variables(where: str, args: Sequence[str]) -> None:
    found = next(filter(None, map(_FILE_VARIABLES.search, args)), None)
    if found:
        raise CustomConfigError(f"{where}: ${found[1]} (a path on the server) is not allowed")


def _within(path: str, root: str) -> bool:
    return path.startswith(root.rstrip("/") + "/")


def _listen(where: str, args: Sequence[str]) -> None:
    address = args[0] if args else ""
    ok = bool(_PORT.fullmatch(address) or _HOST_PORT.fullmatch(address))
    ok = ok or (address.startswith("*:") and bool(_PORT.fullmatch(address[2:])))
    for option in args[1:]:
        ok = ok and (option in _LISTEN_FLAGS or option.startswith(_LISTEN_OPTIONS))
    if not ok or any("$" in a or "unix:" in a.lower() for a in args):
        raise CustomConfigError(
            f'{where}: "listen" takes a port or an address:port and its flags, never a unix '
            "socket or a variable"
        )


def _upstream_server(where: str, args: Sequence[str]) -> None:
    ok = bool(args) and bool(_HOST_PORT.fullmatch(args[0]))
    for option in args[1:]:
        ok = ok and (option in ("backup", "down") or option.startswith(_UPSTREAM_SERVER_OPTIONS))
    if not ok or any("$" in a or "unix:" in a.lower() for a in args):
        raise CustomConfigError(
            f'{where}: an upstream "server" takes a host:port and its options, never a unix '
            "socket or a variable"
        )


def _network(where: str, name: str, args: Sequence[str]) -> None:
    try:
        if len(args) != 1:
            raise ValueError(args)
        ipaddress.ip_network(args[0], strict=False)
    except ValueError as exc:
        raise CustomConfigError(
            f'{where}: "{name}" takes one address or CIDR network'
            + (' (or "all")' if name != "set_real_ip_from" else "")
        ) from exc
