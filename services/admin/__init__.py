"""Operator reads and actions, one backend interface with a local and a remote implementation."""
