"""The error every layer raises for a config that cannot work (the message names the
field); it lives at the bottom so that tasks, methods and the trainer share one type."""


class ConfigError(ValueError):
    """A config that cannot work; the message names the field."""
