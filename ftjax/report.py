"""`python -m ftjax.report`: the tables and plots of a study (`ftjax.studies.report`)."""

import sys

from ftjax.studies.report import main

if __name__ == "__main__":
    sys.exit(main())
