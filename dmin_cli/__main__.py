from dmin_cli.app import main

main()
