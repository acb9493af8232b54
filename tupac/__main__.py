"""``python -m tupac``: the same entry point as the ``tupac`` console script."""

from tupac.cli import main

if __name__ == "__main__":
    main()
