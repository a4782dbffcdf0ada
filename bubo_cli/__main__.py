import sys

from bubo_cli.main import main

sys.exit(main())
