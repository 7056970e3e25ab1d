"""What llmp's programs agree on: settings, the data/ files and their formats, logging.

Nothing here imports a web framework; each program builds its own app on top of it.
"""
