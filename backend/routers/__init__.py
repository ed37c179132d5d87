"""The API v1 routers: status (health, info), captions (pairs) and series (several dates per tile)."""
