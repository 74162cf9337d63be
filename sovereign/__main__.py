import sys

from sovereign.cli import main

sys.exit(main())
