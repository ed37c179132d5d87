"""The API v1 routers: status (health, info) and captions."""
