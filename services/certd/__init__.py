"""certd: owns the nginx configuration (and, later, certificates and their renewal)."""
