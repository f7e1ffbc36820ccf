"""``python -m elude.housekeeping``: list and delete artifacts no kept config refers to, or ``--verify`` every
artifact's bytes (:mod:`elude.pipeline.housekeeping`, whose help lists the options)."""
import sys

from .pipeline.housekeeping import main

if __name__ == "__main__":
    sys.exit(main())
