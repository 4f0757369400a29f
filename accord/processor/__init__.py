"""The imperative shell around the sharing core: the batch loop and its control plane.

``loop`` is the sharing loop and its composition root (``run_processor``); the
agreements feed, retraction sweep, checkpoints, receipts, cursors, the control-plane
lease, the workers' supervisor and the health endpoint sit beside it.
"""
