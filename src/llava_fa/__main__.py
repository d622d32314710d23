from llava_fa.cli import main

main()
