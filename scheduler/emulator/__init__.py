"""Local Vast.ai Serverless emulator: autoscaler and workers over real sockets.

Import what you need from its modules (``emulator.Emulator``, ``settings.EmulatorConfig``,
``cli.run_emulator``): the package itself loads nothing, so the daemon's config can use
``settings`` without loading the emulator.
"""
