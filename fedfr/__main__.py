import sys

from fedfr.cli import main

sys.exit(main())
