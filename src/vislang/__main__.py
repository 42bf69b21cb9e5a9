from vislang.cli import main

main()
