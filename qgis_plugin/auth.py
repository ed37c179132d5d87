"""The backend token, kept in QGIS's authentication database (encrypted by the master password), never in settings.

The token is stored as the password of a "Basic" configuration, the one method every QGIS build has; the plugin
reads it back and sends it as a bearer token itself (the backend's REST API wants ``Authorization: Bearer``).
"""

from __future__ import annotations

from qgis.core import QgsApplication, QgsAuthMethodConfig

from .errors import CaptionRunError

AUTH_METHOD = "Basic"
CONFIG_NAME = "CCExpert backend"
_USERNAME = "ccexpert"


def _manager():
    manager = QgsApplication.authManager()
    if manager.isDisabled():
        raise CaptionRunError(f"QGIS's authentication database is not available ({manager.disabledMessage()})")
    return manager


def store_token(token: str, config_id: str = "") -> str:
    """Save ``token`` (in the configuration ``config_id`` when it exists, else a new one); returns the id."""
    manager = _manager()
    config = QgsAuthMethodConfig()
    if config_id and manager.loadAuthenticationConfig(config_id, config, True):
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
    config = QgsAuthMethodConfig()
    if not _manager().loadAuthenticationConfig(config_id, config, True):
        raise CaptionRunError(
            f"the authentication configuration {config_id} holding the backend token was not found: "
            "enter the token again"
        )
    return config.config("password")
