"""proxy: `/v1/*` for API-key holders: key check, model routing, streaming, analytics rows.

Its hot path is plain ASGI under uvicorn (uvloop, httptools) with one aiohttp session to the
upstreams; no web framework.
"""
