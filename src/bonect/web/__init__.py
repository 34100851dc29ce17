"""The status page served by the daemon: queue, jobs with pictures, models, destinations.

Starlette + Jinja2 on uvicorn (:mod:`bonect.web.server`), server-rendered and read-only by
default; it reads the catalog (:mod:`bonect.catalog.web_queries`) and the model registry
(:mod:`bonect.registry`) and never imports PyTorch. Access rules: :mod:`bonect.web.auth`.
"""
