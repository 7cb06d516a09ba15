from basecli.cli import main

main()
