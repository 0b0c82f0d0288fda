"""The core both tiers stand on (torch-free): the layout, request checking, the front-worker
protocol, the shared HTTP plumbing and the CTranslate2 conversion; the launcher in
``fanout.launch`` and the operator tools in ``fanout.tools``, both reached through the
``fanout`` command (``fanout.cli``)."""
