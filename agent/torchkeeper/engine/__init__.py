"""The engine: everything `torchkeeper apply` needs, and nothing of the agent.

Targets, bundles, plans and the compatibility gate, the transaction engine, the state
store, discovery, doctor and the NVML query. No threads of its own, no GUI, no timers: the
CLI and the agent both drive it through :class:`torchkeeper.engine.core.Engine`.

May import: ``torchkeeper.errors``, ``torchkeeper.home``, ``torchkeeper.platform`` and
``torchkeeper.testing``; never the daemon, the desktop front ends, ``run`` or ``cli``.
"""
