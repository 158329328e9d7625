import sys

from mimirate.cli import main

sys.exit(main())
