from sa2va_queue.cli.main import main

main()
