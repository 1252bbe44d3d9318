"""The background loop around the engine: one worker queue, the file watches and their
debouncer, the safety-net timers, and the view a front end shows.

May import the engine and the layers below it; never ``torchkeeper.desktop`` (the tray
and the notifier are handed to the worker by ``torchkeeper.run``).
"""
