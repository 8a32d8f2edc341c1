"""Local Vast.ai Serverless emulator: autoscaler and workers over real sockets."""

from scheduler.emulator.cli import run_emulator
from scheduler.emulator.emulator import Emulator
from scheduler.emulator.settings import EmulatedEndpoint, EmulatorConfig
from scheduler.emulator.worker import EmulatedWorker

__all__ = ["EmulatedEndpoint", "EmulatedWorker", "Emulator", "EmulatorConfig", "run_emulator"]
