"""CLI command groups; each module adds its commands to `llava_fa.cli.app`."""
