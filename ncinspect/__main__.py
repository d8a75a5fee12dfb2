"""`python -m ncinspect` is the same as the `ncinspect` console script."""

from ncinspect.cli import main

if __name__ == "__main__":
    main()
