"""One `online` command's wiring: Settings read from the environment once, the stores built once from
them, both on first use. The CLI's root callback puts a :class:`Wiring` on the click context; every
command (plugins' too, e.g. `online bench`) takes it with :func:`current`."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

import click

from online.settings import Settings

if TYPE_CHECKING:
    from online.wiring.stores import Stores


class Wiring:
    def __init__(self, settings: Settings | None = None) -> None:
        self._given = settings

    @cached_property
    def settings(self) -> Settings:
        """The environment's settings (``ONLINE_*``, ``.env``), read once."""
        return self._given if self._given is not None else Settings()

    @cached_property
    def stack(self) -> Settings:
        """:attr:`settings`, with the server addresses of a running `online up` filling the gaps."""
        from services.supervisor import running_stack

        return running_stack(self.settings)

    @cached_property
    def stores(self) -> Stores:
        """The stores of the running stack (``online.wiring.stores``), as every other process builds them."""
        from online.wiring.stores import Stores

        return Stores.from_settings(self.stack)

    def logging(self, level: str = "INFO") -> None:
        """Console output on a terminal, JSON lines otherwise (``ONLINE_LOG_FORMAT``): ``online.logs``."""
        from online.logs import configure_logging

        configure_logging(self.settings.log_format, level)

    def close(self) -> None:
        if "stores" in self.__dict__:
            self.stores.close()


def current() -> Wiring:
    """The running command's wiring (a fresh one outside a command, or under an app without the root
    callback, e.g. a plugin's app run on its own)."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return Wiring()
    root = ctx.find_root()
    if not isinstance(root.obj, Wiring):
        root.obj = Wiring()
        root.call_on_close(root.obj.close)
    return root.obj
