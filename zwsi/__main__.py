import sys

from zwsi.cli import main

sys.exit(main())
