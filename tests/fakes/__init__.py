"""Test doubles that run on the loopback interface: a fake LaunchDarkly service and Redis.

Test-only; nothing here is imported by ``shmflags``.
"""
