import sys

from boldgpt.cli import main

sys.exit(main())
