"""The ``cbdm`` command-line interface (installed as ``cbdm_cli``)."""
