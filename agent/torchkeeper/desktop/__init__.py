"""Desktop front ends: the tray icon and menu, toasts, the icon artwork.

They see the agent only through ``torchkeeper.daemon.view`` (an ``AgentView`` to show, a
``Controller`` to ask); besides that they may import ``torchkeeper.platform``, ``torchkeeper.home`` (where the
icons are) and the shared errors, never the engine or the worker.
"""
