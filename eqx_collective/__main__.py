from .tour import main


main()
