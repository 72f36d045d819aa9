"""Exception types a user can meet; each message names the file or setting and the fix."""


class BlueberryError(Exception):
    """Base class for errors this toolkit raises on purpose."""


class ConfigError(BlueberryError, ValueError):
    """A setting is missing, unknown or has a value that cannot work."""


class ModelLayoutError(BlueberryError, FileNotFoundError):
    """A model directory does not have the diffusers layout a family needs."""


class LaunchError(BlueberryError, RuntimeError):
    """The process was launched in a way that would silently train wrongly."""
