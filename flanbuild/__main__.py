import sys

from flanbuild.cli.main import main

sys.exit(main())
