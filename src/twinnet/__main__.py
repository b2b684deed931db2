from twinnet.cli import main

main()
