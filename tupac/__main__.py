from tupac.cli import main

main()
