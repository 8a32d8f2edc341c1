"""What every config section shares: the frozen model base and the error with YAML paths."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

EMBEDDED = "embedded"
EMULATOR_KEY = "local-emulator-key"


class ConfigError(Exception):
    """A config file that cannot be used; ``problems`` holds one ``path: message`` per error."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
