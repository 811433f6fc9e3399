"""Subcommands of the `zwsi` console command; each module defines `register(subparsers)`.

Modules import their heavy dependencies (torch, slide readers) inside the handler, so `zwsi --help` stays fast.
"""
