from kit.commands.main import main

main()
