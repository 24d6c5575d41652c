"""The web app (gradio, `omnivox app`) and the HTTP service (FastAPI, `omnivox serve`) around the pipelines.

Modules: `jobs` (the queue: one worker per device, progress, cancellation), `inputs` (upload checks), `tasks`
(parameters, resident models, the job functions), `server` (FastAPI) and `web` (gradio). Import them directly;
this package imports nothing heavy (`fastapi` and `gradio` are the optional extra `omnivox[app]`).
"""
