"""proxy: `/v1/*` for API-key holders: key check, model routing, streaming, analytics rows.

Its hot path is plain ASGI under uvicorn (uvloop, httptools) with its own small HTTP/1.1 client
to the upstreams (pool.py); no web framework.
"""
