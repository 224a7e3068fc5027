"""The live dashboard: browsers' WebSockets, fed from PostgreSQL NOTIFY on every cloud instance.

Import the submodules directly; this package imports nothing so ``cloud.config`` can use
``cloud.live.settings`` without cycles.
"""
