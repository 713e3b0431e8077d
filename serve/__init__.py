"""edgevfm.serve: bundles behind an OpenAI-compatible HTTP server (``edgevfm serve``) and a web page.

A Starlette app on uvicorn (the ``[serve]`` extra); it imports the runtime only, never torch.
:mod:`.app` builds the app, :mod:`.models` holds each served bundle with its queue, :mod:`.chat`,
:mod:`.vision` and :mod:`.sam` answer the endpoints, :mod:`.requests` are their pydantic request
models and :mod:`.images` turns a request's image into a checked Pillow image.
"""
