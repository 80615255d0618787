from cbdm_cli.main import main

main()
