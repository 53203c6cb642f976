"""Media transcoding, the `media` workload (docs/ARCHITECTURE.md §6): what a job asks (`job.py`), what this build
of the FFmpeg libraries can do and the limits a worker keeps (`formats.py`), the input spooled to a temporary file
that is always removed (`spool.py`), probing (`probe.py`) and the transcoding itself with PyAV (`transcode.py`).

PyAV's calls block; the worker runs them in a thread and cancels them through a `threading.Event`.
"""
