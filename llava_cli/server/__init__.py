"""`llava serve`: one resident model behind an OpenAI-compatible HTTP API.

The pieces, each in its own module:

* ``api`` — the request body, checked field by field into a ``ChatRequest`` (every
  problem an ``ApiError`` that becomes a 4xx in OpenAI's error shape), the stop-string
  matcher and the ``--keep-alive`` durations. Standard library only.
* ``sources`` — the media a request names (``data:``, ``http(s)``, ``file://`` under an
  ``--allowed-media-path``), fetched and decoded off the worker, with an LRU of decoded
  media keyed by content hash and frame settings.
* ``worker`` — the ONE thread that owns the engine and the generation core: it builds
  prompts, reuses media encodings, submits to the core and steps it while anything is in
  flight, so concurrent requests decode together in one batched step; it also unloads
  the model after ``--keep-alive`` of idleness and loads it again on the next request.
* ``app`` — the starlette application and the uvicorn server around it.

Nothing here is imported by ``llava --help`` or any other command: ``llava serve`` imports
it when it runs.
"""
