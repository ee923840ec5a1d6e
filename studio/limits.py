"""How much of the one model (and the disk) a client may take: the app's limits, in two presets.

`LOCAL` is the studio as a person runs it on their own machine (no cost cap, no per-session limit, the queue and
uploads as they were; only a job nobody has read for 30 s is stopped); `PUBLIC` is the studio open to anyone (`app.py --public`, a Hugging Face Space).
`app.build_app(engine, limits=...)` applies them (`launch_settings(limits)` the launch-time ones).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """max_job_cost: the most one job may cost, in standard images (studio.costs; None: no cap).
    jobs_per_session: model jobs a browser or gradio_client session may have running or waiting (None: any).
    queue_size: model jobs waiting in all, beyond which Gradio answers "queue full".
    max_upload_mb: the largest file Gradio accepts (launch's max_file_size).
    upload_retention_s: uploads and outputs older than this are deleted (Blocks' delete_cache, checked as often).
    side_concurrency: how many side handlers (previews, maps, plots, Load settings: no model job) run at once,
    each kind apart (None: any).
    max_cache_mb: uploads are refused while Gradio's cache folder (uploads and outputs) holds more than this
    (None: no cap).
    reader_timeout_s: a job whose events nobody has read for this long is stopped (a /call POST whose stream is never
    read; studio.ui.stream.ReaderWatch); None: never."""

    max_job_cost: float | None
    jobs_per_session: int | None
    queue_size: int
    max_upload_mb: int
    upload_retention_s: int
    side_concurrency: int | None
    max_cache_mb: int | None
    reader_timeout_s: float | None


LOCAL = Limits(max_job_cost=None, jobs_per_session=None, queue_size=16, max_upload_mb=20, upload_retention_s=3600,
               side_concurrency=None, max_cache_mb=None, reader_timeout_s=30.0)

# The cap, 4 standard images: every tab's defaults on the embedded model cost at most 2.5 (LoRA's 500-step recipe at
# batch 4; a 128-px generation 0.03, null-text inversion 0.75, DreamBooth 2.25), while 2048x2048 at the default 25
# steps costs 8 (it held the model 105 s on CPU) and batch 8 at 1024x1024 16 (86 s). Four is about a minute of
# the model on a CPU Space. One job per session, and a short queue: a session waits behind at most 7 others.
# Side handlers one of a kind at a time: 8 parallel control-map previews of a 4000x4000 upload beside a running job
# took RSS up 5.7 GB and the job 4.0x as long unbounded, 1.1 GB one at a time (bench in the #19 report; the job
# still shares the CPU with the one running). Uploads: a settings PNG or an input image at the studio's 4096-px limit
# fits in 10 MB; ten minutes is long enough to use what was uploaded; 2 GB of cache keeps a Space's disk from filling.
# A job unread for 10 s is stopped (30 s locally): a live reader, even one lagging behind on a slow link, takes some
# of its messages within that, and a fire-and-forget /call holds the model for no longer.
PUBLIC = Limits(max_job_cost=4.0, jobs_per_session=1, queue_size=8, max_upload_mb=10, upload_retention_s=600,
                side_concurrency=1, max_cache_mb=2048, reader_timeout_s=10.0)
