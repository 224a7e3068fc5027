"""The cloud side of the edge sync: batch ingest, the NOTIFY hub, config and command down-links.

Import the submodules directly; this package imports nothing so ``cloud.config`` can use
``cloud.sync.settings`` without cycles.
"""
