"""The backend token: kept in QGIS's authentication database (encrypted by the master password), or in memory for
this QGIS session only; never in settings.

The token is stored as the password of a "Basic" configuration, the one method every QGIS build has; the plugin
reads it back and sends it as a bearer token itself (the backend's REST API wants ``Authorization: Bearer``).
Reading or storing a configuration may make QGIS ask for its master password (or, the first time, to set one), so
the dialog does either only when a backend wants a token, and says why first.
"""

from __future__ import annotations

import uuid

from qgis.core import QgsAuthMethodConfig

from .errors import CaptionRunError
from .qgis_compat import auth_manager

AUTH_METHOD = "Basic"
CONFIG_NAME = "CCExpert backend"
_USERNAME = "ccexpert"
#: The prefix of a token kept for this session only (never stored: gone when QGIS closes).
SESSION_PREFIX = "session:"
_SESSION_TOKENS: dict[str, str] = {}


def _manager():
    manager = auth_manager()
    if manager.isDisabled():
        raise CaptionRunError(f"QGIS's authentication database is not available ({manager.disabledMessage()})")
    return manager


def is_session_token(config_id: str) -> bool:
    """Whether ``config_id`` names a token kept for this session only."""
    return config_id.startswith(SESSION_PREFIX)


def keep_for_session(token: str) -> str:
    """Keep ``token`` in memory until QGIS closes; returns the id that :func:`load_token` reads it by."""
    config_id = SESSION_PREFIX + uuid.uuid4().hex[:8]
    _SESSION_TOKENS[config_id] = token
    return config_id


def unlocked() -> bool:
    """Whether QGIS's authentication database is open already (storing a token asks for nothing then)."""
    manager = auth_manager()
    return not manager.isDisabled() and manager.masterPasswordIsSet()


def store_token(token: str, config_id: str = "") -> str:
    """Save ``token`` (in the configuration ``config_id`` when it exists, else a new one); returns the id."""
    manager = _manager()
    config = QgsAuthMethodConfig()
    if config_id and not is_session_token(config_id) and manager.loadAuthenticationConfig(config_id, config, True):
        if config.config("password") == token:
            return config_id
        config.setConfig("password", token)
        if not manager.updateAuthenticationConfig(config):
            raise CaptionRunError("the token could not be saved in QGIS's authentication database")
        return config_id
    config = QgsAuthMethodConfig(AUTH_METHOD)
    config.setName(CONFIG_NAME)
    config.setConfig("username", _USERNAME)
    config.setConfig("password", token)
    stored, config = manager.storeAuthenticationConfig(config)
    if not stored:
        raise CaptionRunError("the token could not be saved in QGIS's authentication database (is it unlocked?)")
    return config.id()


def load_token(config_id: str) -> str:
    """The token kept in ``config_id`` ("" for none)."""
    if not config_id:
        return ""
    if is_session_token(config_id):
        if config_id not in _SESSION_TOKENS:
            raise CaptionRunError("the backend token was kept for an earlier QGIS session only: enter it again")
        return _SESSION_TOKENS[config_id]
    config = QgsAuthMethodConfig()
    if not _manager().loadAuthenticationConfig(config_id, config, True):
        raise CaptionRunError(
            f"the authentication configuration {config_id} holding the backend token was not found: "
            "enter the token again"
        )
    return config.config("password")
