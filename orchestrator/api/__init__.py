"""HTTP controllers. They translate HTTP to use cases and back; no business rule lives here."""
