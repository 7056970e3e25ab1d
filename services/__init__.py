"""llmp's programs: `api`, `proxy` and `certd`. They never import each other."""
