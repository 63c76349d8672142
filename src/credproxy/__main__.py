"""``python -m credproxy``: the same command as the ``credproxy`` entry point."""

from credproxy.console import main

if __name__ == "__main__":
    main()
