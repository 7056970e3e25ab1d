"""Minimal fake of the Cloudflare v4 REST API (zones + dns_records) for offline DNS-01 tests.

TXT records created through it are mirrored into pebble-challtestsrv's mock DNS
(management API /set-txt and /clear-txt), so pebble's DNS-01 validation sees them.

Usage: python3 fake_cloudflare.py --port 8089 --zones example.test --token test-token \
           --challtestsrv http://127.0.0.1:8055
Base URL for clients: http://127.0.0.1:8089/client/v4
"""

import argparse
import json
import threading
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

LOCK = threading.Lock()
STATE: dict[str, Any] = {"zones": {}, "records": {}, "log": []}  # records: id -> dict
ARGS = None


def challtest(path, body):
    req = urllib.request.Request(
        ARGS.challtestsrv + path,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        r.read()


def sync_txt(name):
    """Make challtestsrv's TXT set for `name` equal to our records with that name."""
    fqdn = name.rstrip(".") + "."
    challtest("/clear-txt", {"host": fqdn})
    for rec in STATE["records"].values():
        if rec["type"] == "TXT" and rec["name"] == name:
            challtest("/set-txt", {"host": fqdn, "value": rec["content"]})


def envelope(result, status=200, result_info=None):
    body = {"success": status < 400, "errors": [], "messages": [], "result": result}
    if result_info is not None:
        body["result_info"] = result_info
    return status, body


def error(status, code, message):
    return status, {
        "success": False,
        "errors": [{"code": code, "message": message}],
        "messages": [],
        "result": None,
    }


def paginate(items, q):
    per_page = int(q.get("per_page", ["20"])[0])
    page = int(q.get("page", ["1"])[0])
    chunk = items[(page - 1) * per_page : page * per_page]
    total_pages = max(1, -(-len(items) // per_page))
    return envelope(
        chunk,
        result_info={
            "page": page,
            "per_page": per_page,
            "count": len(chunk),
            "total_count": len(items),
            "total_pages": total_pages,
        },
    )


def qget(q, *keys):
    """First value among keys; supports new SDK 'name.exact' and old SDK 'name'."""
    for k in keys:
        if k in q:
            return q[k][0]
    return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet
        pass

    def _send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _auth_ok(self):
        if ARGS.token is None:
            return True
        return self.headers.get("Authorization") == f"Bearer {ARGS.token}"

    def _handle(self, method):
        url = urlsplit(self.path)
        q = parse_qs(url.query)
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"null") if length else None
        with LOCK:
            STATE["log"].append(
                {"method": method, "path": url.path, "query": url.query, "body": body}
            )
        if url.path == "/_fake/state":
            with LOCK:
                return self._send(
                    200, {"records": list(STATE["records"].values()), "log": STATE["log"]}
                )
        parts = [p for p in url.path.split("/") if p]
        if parts[:2] != ["client", "v4"]:
            return self._send(*error(404, 7000, "No route for that URI"))
        if not self._auth_ok():
            return self._send(*error(403, 9109, "Invalid access token"))
        parts = parts[2:]
        with LOCK:
            if method == "GET" and parts == ["zones"]:
                name = qget(q, "name")
                zones = [z for z in STATE["zones"].values() if name in (None, z["name"])]
                return self._send(*paginate(zones, q))
            if len(parts) >= 3 and parts[0] == "zones" and parts[2] == "dns_records":
                zone_id = parts[1]
                if zone_id not in STATE["zones"]:
                    return self._send(*error(404, 7003, "Could not route to zone"))
                if method == "POST" and len(parts) == 3:
                    rec = {
                        "id": uuid.uuid4().hex,
                        "zone_id": zone_id,
                        "zone_name": STATE["zones"][zone_id]["name"],
                        "type": body["type"],
                        "name": body["name"].rstrip("."),
                        "content": body["content"],
                        "ttl": body.get("ttl", 1),
                        "proxied": False,
                        "proxiable": False,
                    }
                    for r in STATE["records"].values():
                        if (r["type"], r["name"], r["content"]) == (
                            rec["type"],
                            rec["name"],
                            rec["content"],
                        ):
                            return self._send(
                                *error(400, 81058, "An identical record already exists.")
                            )
                    STATE["records"][rec["id"]] = rec
                    if rec["type"] == "TXT":
                        sync_txt(rec["name"])
                    return self._send(*envelope(rec))
                if method == "GET" and len(parts) == 3:
                    typ = qget(q, "type")
                    name = qget(q, "name.exact", "name")
                    content = qget(q, "content.exact", "content")
                    recs = [
                        r
                        for r in STATE["records"].values()
                        if r["zone_id"] == zone_id
                        and typ in (None, r["type"])
                        and (name is None or r["name"] == name.rstrip("."))
                        and content in (None, r["content"])
                    ]
                    return self._send(*paginate(recs, q))
                if method == "DELETE" and len(parts) == 4:
                    rec = STATE["records"].pop(parts[3], None)
                    if rec is None:
                        return self._send(*error(404, 81044, "Record does not exist."))
                    if rec["type"] == "TXT":
                        sync_txt(rec["name"])
                    return self._send(*envelope({"id": rec["id"]}))
        return self._send(*error(404, 7000, "No route for that URI"))

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_DELETE(self):
        self._handle("DELETE")


def main():
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8089)
    p.add_argument("--zones", default="example.test", help="comma separated zone names")
    p.add_argument("--token", default="test-token", help="expected API token ('' = no check)")
    p.add_argument("--challtestsrv", default="http://127.0.0.1:8055")
    ARGS = p.parse_args()
    if ARGS.token == "":
        ARGS.token = None
    for z in ARGS.zones.split(","):
        zid = uuid.uuid5(uuid.NAMESPACE_DNS, z).hex
        STATE["zones"][zid] = {"id": zid, "name": z, "status": "active"}
    srv = ThreadingHTTPServer((ARGS.host, ARGS.port), Handler)
    print(
        f"fake cloudflare on http://{ARGS.host}:{ARGS.port}/client/v4 zones={ARGS.zones}",
        flush=True,
    )
    srv.serve_forever()


if __name__ == "__main__":
    main()
