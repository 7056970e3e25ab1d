"""The benchmark: llmp against plain nginx and against the upstream reached directly.

Run with `make bench` or `python -m bench --help`; `bench/README.md` explains the figures.
"""
