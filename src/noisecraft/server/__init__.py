"""HTTP serving: an AUTOMATIC1111-compatible API, a native streaming API and a web page.

No model logic lives here: requests become ``Pipeline`` calls. ``noisecraft serve`` starts it;
``noisecraft.server.app.create_app`` builds the app for other ASGI servers. This package imports
nothing heavy on its own, so that the CLI stays quick to start.
"""
