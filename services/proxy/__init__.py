"""proxy: `/v1/*` for API-key holders: key check, model routing, streaming, analytics rows.

Its hot path is plain ASGI under uvicorn (uvloop, httptools); no web framework. It reaches the
upstreams through one declared client interface (upstream.py): its own small HTTP/1.1 client
(pool.py) by default, or aiohttp's (aiohttp_client.py).
"""
