"""`python -m alignment.cli ...` and `deepspeed --module alignment.cli ...`."""

import sys

from alignment.cli import main

sys.exit(main())
