"""`python -m ftjax.sweep`: a grid of configs, each point its own run (`ftjax.studies.sweep`)."""

import sys

from ftjax.studies.sweep import main

if __name__ == "__main__":
    sys.exit(main())
