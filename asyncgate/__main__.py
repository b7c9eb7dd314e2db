import sys

from asyncgate.cli import main

sys.exit(main())
