"""The original llm-proxy's files, as it writes them: fixtures for the upgrade tests.

- `.env` with its variable names;
- `data/apikeys.json`: `JSON.stringify(..., 2)` and a newline, mode 0644 (written by root);
- `data/analytics/<md5 of the full key>.csv`: `startTime,endTime`, `null` for a failure;
- `nginx/server.conf`: its template (src/static/nginx-server-template.conf, v1.6.1) with
  `{{domainName}}` and `{{allowedIPs}}` replaced as its write-default did.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from shared.apikeys import ApiKey

TEMPLATE = """server {
  listen 443 ssl;

  add_header 'Access-Control-Allow-Origin' '*';
  add_header 'Add-Control-Allow-Methods' 'GET, POST';

  server_name {{domainName}};
  server_tokens off;

  real_ip_header X-Forwarded-For;

  ssl_certificate /etc/letsencrypt/live/{{domainName}}/fullchain.pem;
  ssl_certificate_key /etc/letsencrypt/live/{{domainName}}/privkey.pem;
  # include /etc/letsencrypt/options-ssl-nginx.conf;
  # ssl_dhparam /etc/letsencrypt/ssl-dhparams.pem;

  location ~ ^/v1/(.*) {
    proxy_pass_header Authorization;
    proxy_pass http://localhost:8080;
    proxy_redirect off;
    proxy_set_header X-Real-IP $remote_addr;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_http_version 1.1;
    proxy_set_header Upgrade $http_upgrade;
    proxy_set_header Connection 'upgrade';
    proxy_set_header Host $host;
    proxy_cache_bypass $http_upgrade;
    proxy_buffering off;
    client_max_body_size 0;
    proxy_read_timeout 36000s;
  }

  location ~ /(auth|nginx)/(.*) {
    proxy_pass_header Authorization;
    proxy_pass http://localhost:8080;
    proxy_redirect off;
    proxy_set_header X-Real-IP $remote_addr;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_http_version 1.1;
    proxy_set_header Upgrade $http_upgrade;
    proxy_set_header Connection 'upgrade';
    proxy_set_header Host $host;
    proxy_cache_bypass $http_upgrade;
    proxy_buffering off;
    client_max_body_size 0;
    proxy_read_timeout 36000s;
{{allowedIPs}}    deny all;
  }

  location ~ (.*) {
    return 404;
  }
}

server {
  listen 443 ssl;

  server_name ${public_ip};
  server_tokens off;
  return 444; # "Connection closed without response"
}"""


def server_conf(domain: str, cidr_groups: list[str]) -> str:
    allowed = "".join(f"    allow {cidr};\n" for cidr in cidr_groups)
    return TEMPLATE.replace("{{domainName}}", domain).replace("{{allowedIPs}}", allowed)


def env_file(target_urls: str, port: int) -> str:
    return (
        f"PORT={port}\nTARGET_URLS={target_urls}\nJWT_SECRET=your-jwt-secret-key-here\n"
        "AUTH_USERNAME=admin\nAUTH_PASSWORD=secure_password\n"
    )


def write_keys(path: Path, keys: list[ApiKey]) -> None:
    records = [
        {"id": k.id, "username": k.username, "key": k.key, "createdAt": k.createdAt} for k in keys
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"keys": records}, indent=2) + "\n")
    path.chmod(0o644)


def write_csv(data: Path, key: ApiKey, rows: list[tuple[int, int | None]]) -> Path:
    folder = data / "analytics"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (hashlib.md5(key.key.encode()).hexdigest() + ".csv")
    lines = ["startTime,endTime"] + [f"{s},{'null' if e is None else e}" for s, e in rows]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o644)
    return path
