"""Snapshot container: layout (``format``), builder, compiled records (``compile``), reader.

Safe in any process; importing this package imports nothing else, so a worker that only needs
``format`` does not pay for the builder.
"""
