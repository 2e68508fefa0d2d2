from queuechat.cli import main

main()
