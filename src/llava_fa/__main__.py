"""`python -m llava_fa`: the same command line as `llava-fa`."""

from llava_fa.commands.app import main

main()
