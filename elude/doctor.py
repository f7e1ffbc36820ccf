"""``python -m elude.doctor [--configfile F ...]``: before a long run, what will and will not work here and why
(:mod:`elude.pipeline.doctor`, whose help lists the checks); exit status 1 when the run would stop."""
import sys

from .pipeline.doctor import main

if __name__ == "__main__":
    sys.exit(main())
