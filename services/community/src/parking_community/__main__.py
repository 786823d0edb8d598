"""`parking-community` / `python -m parking_community`."""

from __future__ import annotations

import asyncio

from . import config, logs
from .app import serve


def main(argv: list[str] | None = None) -> None:
    settings = config.parse(argv)
    logs.setup()
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
