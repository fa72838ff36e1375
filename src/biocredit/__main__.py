import sys

from biocredit.cli import main

sys.exit(main())
