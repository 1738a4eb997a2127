"""Settings and logging: the bottom layer, imported by every other one."""

from config.settings import Environment, Settings, build_settings, get_settings

__all__ = ["Environment", "Settings", "build_settings", "get_settings"]
