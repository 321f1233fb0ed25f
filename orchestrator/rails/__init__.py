"""Payment rails: how a customer is told to pay, and by which provider."""
