"""llmp's state in PostgreSQL (DATABASE_URL), shared by every replica: the schema and its
migrations (`schema`), short transactions that bring it up to date first (`transactions`), the
keys (`keys`) and the usage log (`usage`). Imported only when DATABASE_URL is set
(`shared.storage`)."""
