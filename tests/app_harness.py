"""Launch the real app (app.build_app on the embedded/tiny engine) on a free local port for tests."""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

PROMPT = "a big red circle on the left"  # every word is in the shapes vocabulary (embedded and tiny models)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def launched_app(engine, temp_dir: Path) -> Iterator[str]:
    """Yield the URL of the app for `engine`, launched with the production launch settings."""
    os.environ["GRADIO_TEMP_DIR"] = str(temp_dir)  # uploads and outputs land here, not in /tmp/gradio
    import app

    demo = app.build_app(engine, concepts_dir=temp_dir / "concepts")  # what the Personalize tab trains
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **app.launch_settings())
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()
