from mechbd.cli import main

main()
