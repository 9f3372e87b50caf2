from gaa_cli.cli import main

main()
