"""The `llava-fa` commands: one module per command, each a plain function with its Typer options.

`commands.app` gathers them into the app; the command modules import nothing of it.
"""
