"""Policy schema, rule engine and audit log."""
