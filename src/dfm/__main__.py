import sys

from dfm.cli import main

sys.exit(main())
