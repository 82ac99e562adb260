"""Small shared utilities: atomic writes, secret redaction, the name registry."""
