"""Operator reads and actions behind one interface (:class:`services.admin.backend.AdminBackend`):
:class:`~services.admin.local.LocalAdmin` over this process's stores (the API's routers and the CLI
without ``--api``), :class:`~services.admin.remote.RemoteAdmin` over a running API (the CLI with
``--api URL``). Both answer with the API's own response models (``online.contract``)."""
