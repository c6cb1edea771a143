import sys

from edgevit.cli import main

if __name__ == "__main__":  # a spawned worker (bench runs each cell in its own process) imports this module again
    sys.exit(main())
