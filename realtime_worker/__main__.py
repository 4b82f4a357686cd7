import sys

from realtime_worker.cli import main

sys.exit(main())
