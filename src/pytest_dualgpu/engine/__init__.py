"""The engine: the only layer that touches torch and the device.

``api`` is the entry (``dual_infer``); ``call`` is the flow of one call, from placing the inputs to the
``DualResult``; ``executor`` runs lanes back to back or at once; ``backends`` is the device interface (CPU
threads, CUDA streams and events); the other modules each hold one step: warm-up, measuring and when to
stop, comparison, sync checks, pipelines, profiling, sanity checks. Nothing here imports the plugin or the
command.
"""
