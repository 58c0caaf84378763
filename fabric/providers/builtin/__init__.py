"""Providers a user can run today: ``fabric provider logs | prometheus | webhooks | sql``."""
