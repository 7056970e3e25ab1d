"""shared/payload.py: nginx and the proxy refuse an oversized body in the same words."""

import json

from services.proxy.errors import payload_too_large
from shared.payload import too_large_body


def test_nginx_and_the_proxy_give_the_same_answer():
    assert too_large_body(1024) == payload_too_large(1024).body()
    assert json.loads(too_large_body(1024))["error"]["code"] == "payload_too_large"
