"""The ``cd4ml`` command for people: request and follow runs, read the ledger and dead letters, push models.

It lives outside ``functions/`` (the deployed archive holds only what the functions run) and uses the
``cd4ml`` library. Other packages add subcommands through the ``cd4ml.cli`` entry point group: the local
stack's ``cd4ml local …`` comes from ``local_emulator.cli``, so this package never imports it.
"""
