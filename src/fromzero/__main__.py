import sys

from fromzero.cli import main

sys.exit(main())
